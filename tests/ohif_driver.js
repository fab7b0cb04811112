// Drives the real OHIF viewer in Debian's headless Chromium (playwright-core) for tests/test_ohif.py
// and bench/viewer.py. Reads a JSON payload on stdin, prints one JSON report line on stdout.
//
// payload: {
//   viewer: "http://127.0.0.1:PORT",          // where OHIF's dist/ is served
//   chromium: "/usr/bin/chromium", flags: [...],
//   token: null | "jwt",                      // OHIF's ?token= (sets its Authorization header)
//   list: true | false,                       // check the study list and the patient filter
//   filter: { text: "smith", expect: "SMITH, ANNA" },
//   open: ["StudyInstanceUID", ...],          // studies opened in the viewer, one page load each
//   waitFullResolution: false,                // also wait until an image is shown at full resolution
//   videos: ["StudyInstanceUID", ...],        // opened studies that are a video: wait for <video> to play
//   reject: { study, series },                // after the openings: reject the series through OHIF's
//                                             // data source (rejectSeries below), then open the study again
//   timeoutMs: 60000,
// }
// report: { rows, filtered, opened: [{ study, firstImageMs, canvas: {mean, std, nonBlack},
//                                     shown: [{ quality, rows, columns, frame }] }
//                                   or, for a video, { study, firstImageMs, video: {readyState, width, ...} }],
//           bad: ["401 GET url", ...], failed: [...], consoleErrors: [...], error,
//           ranged: ["206 bytes=0-65535 bytes 0-9999/10000 url", ...] (responses to Range requests),
//           rangedTypes: [their Content-Type, in the same order],
//           posts: [{ status, url, authorization }] (every POST the page sent, with its answer),
//           reject: { shipped, completed, postsBefore, reopened } (with payload.reject) }
'use strict';
const { chromium } = require('playwright-core');

function readStdin() {
  return new Promise((resolve) => {
    let data = '';
    process.stdin.on('data', (c) => (data += c));
    process.stdin.on('end', () => resolve(JSON.parse(data)));
  });
}

// Statistics of the largest cornerstone canvas: drawn onto a 2D canvas and read back, so the
// check sees what was rendered (CPU or WebGL), not merely that a canvas exists.
async function canvasStats(page) {
  return page.evaluate(() => {
    const canvases = Array.from(document.querySelectorAll('canvas.cornerstone-canvas, [data-cy="viewport-pane"] canvas'));
    if (!canvases.length) return null;
    const c = canvases.reduce((a, b) => (a.width * a.height >= b.width * b.height ? a : b));
    if (!c.width || !c.height) return null;
    const t = document.createElement('canvas');
    t.width = c.width;
    t.height = c.height;
    const ctx = t.getContext('2d');
    ctx.drawImage(c, 0, 0);
    const d = ctx.getImageData(0, 0, t.width, t.height).data;
    let n = 0, sum = 0, sq = 0, nonBlack = 0;
    const levels = new Set();
    for (let i = 0; i < d.length; i += 16) {  // every 4th pixel is plenty
      const v = (d[i] + d[i + 1] + d[i + 2]) / 3;
      n++; sum += v; sq += v * v;
      if (v > 8) nonBlack++;
      levels.add(Math.round(v));
    }
    const mean = sum / n;
    return { width: c.width, height: c.height, mean, std: Math.sqrt(Math.max(0, sq / n - mean * mean)),
             nonBlack: nonBlack / n, levels: levels.size };
  });
}

function rendered(stats) {
  return stats && stats.std > 10 && stats.nonBlack > 0.02 && stats.levels > 8;
}

async function waitFor(predicate, timeoutMs, what) {
  const deadline = Date.now() + timeoutMs;
  let last;
  while (Date.now() < deadline) {
    last = await predicate();
    if (last) return last;
    await new Promise((r) => setTimeout(r, 200));
  }
  throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
}

async function rowTexts(page) {
  return page.$$eval('tr[aria-selected]', (rows) =>
    rows.map((row) => Array.from(row.querySelectorAll('td')).map((td) => td.innerText.trim())));
}

// The series descriptions on the study browser's thumbnails, in their order.
async function thumbnails(page) {
  return page.$$eval('[data-cy="study-browser-thumbnail"], [data-cy="study-browser-thumbnail-no-image"]',
    (items) => items.map((item) => {
      const label = item.querySelector('[data-cy="series-description-label"]');
      return label ? label.innerText.trim() : '';
    }));
}

// Rejects a series through OHIF's DICOMweb data source (supportsReject: true), which is all
// OHIF 3.13.2 has for it (no menu item calls it). First as shipped: its createDicomWebApi hands
// dcm4cheeReject the authorization helper before initialize() has defined it, so the call throws
// "getAuthrorizationHeader is not a function" before any request. Then OHIF's own reject.series
// (its source text: URL, method, rejection code, status handling) is bound again with the helper
// initialize() defines (the Authorization of OHIF's userAuthenticationService), as the one-line
// upstream fix would bind it, and called through the data source.
async function rejectSeries(page, payload, report) {
  const { study, series } = payload.reject;
  const shipped = await page.evaluate(async ([study, series]) => {
    const [dataSource] = window.extensionManager.getActiveDataSource();
    try {
      await dataSource.reject.series(study, series);
      return 'resolved';
    } catch (e) {
      return String((e && e.message) || e);
    }
  }, [study, series]);
  const postsBefore = report.posts.length;
  const completed = await page.evaluate(async ([study, series]) => {
    const [dataSource] = window.extensionManager.getActiveDataSource();
    const source = dataSource.reject.series.toString();
    if (!source.includes('getAuthrorizationHeader') || !source.includes('/reject/')) {
      return 'unexpected reject.series: ' + source.slice(0, 300);
    }
    const getAuthorizationHeader = () => {
      const auth = window.services.userAuthenticationService.getAuthorizationHeader();
      return auth && auth.Authorization ? { Authorization: auth.Authorization } : {};
    };
    // eslint-disable-next-line no-new-func
    const bind = new Function('wadoRoot', 'getAuthrorizationHeader', `return { series: ${source} };`);
    dataSource.reject = bind(dataSource.getConfig().wadoRoot, getAuthorizationHeader);
    try {
      await dataSource.reject.series(study, series);
      return 'resolved';
    } catch (e) {
      return String((e && e.message) || e);
    }
  }, [study, series]);
  // The response event may trail the XHR's completion in the page by a moment.
  await waitFor(async () => report.posts.length > postsBefore || completed !== 'resolved', 5000, 'the reject POST')
    .catch(() => null);
  return { shipped, completed, postsBefore };
}

async function quiet(page, timeoutMs) {
  try {
    await page.waitForLoadState('networkidle', { timeout: timeoutMs });
  } catch (e) {
    // a long-polling or slow request: the explicit waits below decide
  }
}

async function openStudy(page, payload, study, trace) {
  const url = `${payload.viewer}/viewer?StudyInstanceUIDs=${study}` + (payload.token ? `&token=${payload.token}` : '');
  const started = Date.now();
  if (trace) trace.length = 0, trace.started = started;
  await page.goto(url, { waitUntil: 'domcontentloaded', timeout: payload.timeoutMs });
  if ((payload.videos || []).includes(study)) {
    // A video instance: OHIF's video viewport plays it in a <video> element (HAVE_CURRENT_DATA = 2).
    // Cornerstone3D's video viewport draws a <video> element it keeps out of the document onto its
    // canvas: the init script below remembers every video element made.
    const video = await waitFor(() => page.evaluate(() => {
      const v = [...(window.__videos || []), ...document.querySelectorAll('video')].find((e) => e.readyState >= 2);
      return v ? { readyState: v.readyState, width: v.videoWidth, height: v.videoHeight,
                   duration: v.duration, src: v.currentSrc } : null;
    }), payload.timeoutMs, `a playing video of study ${study}`);
    const firstImageMs = Date.now() - started;
    await quiet(page, payload.timeoutMs);
    return { study, firstImageMs, video };
  }
  const stats = await waitFor(async () => {
    const s = await canvasStats(page);
    return rendered(s) ? s : null;
  }, payload.timeoutMs, `rendered pixels of study ${study}`);
  const firstImageMs = Date.now() - started;
  if (payload.waitFullResolution) {
    // Progressive loading: a sub-resolution image renders first; wait for the full one too.
    await waitFor(() => page.evaluate(() => (window.__shownImages || []).some((s) => s.quality === 8)),
                  payload.timeoutMs, `a full-resolution image of study ${study}`);
  }
  await quiet(page, payload.timeoutMs);  // every remaining frame and thumbnail request done
  const shown = await page.evaluate(() => window.__shownImages || []);
  if (payload.reject) {
    // The study browser fills in after the first image: wait for its thumbnails to be counted.
    await waitFor(async () => (await thumbnails(page)).length > 0, payload.timeoutMs, `thumbnails of study ${study}`);
    await quiet(page, payload.timeoutMs);
  }
  return { study, firstImageMs, canvas: await canvasStats(page) || stats, shown, thumbnails: await thumbnails(page) };
}

async function main() {
  const payload = await readStdin();
  payload.timeoutMs = payload.timeoutMs || 60000;
  const report = {
    rows: null, filtered: null, opened: [], bad: [], failed: [], consoleErrors: [], requests: 0, ranged: [], rangedTypes: [],
    posts: [],
  };
  const browser = await chromium.launch({
    executablePath: payload.chromium || '/usr/bin/chromium',
    args: payload.flags || [],
    headless: true,
  });
  try {
    const context = await browser.newContext({ viewport: { width: 1400, height: 900 } });
    // Every image a stack viewport shows (Cornerstone3D's STACK_NEW_IMAGE, dispatched on the
    // viewport element and seen here in the capture phase), with its imageQualityStatus: 6 is
    // SUBRESOLUTION (drawn from a prefix of the frame), 8 FULL_RESOLUTION.
    await context.addInitScript(() => {
      window.__videos = [];
      const createElement = Document.prototype.createElement;
      Document.prototype.createElement = function (tag, ...rest) {
        const element = createElement.call(this, tag, ...rest);
        if (String(tag).toLowerCase() === 'video') window.__videos.push(element);
        return element;
      };
      window.__shownImages = [];
      window.addEventListener('CORNERSTONE_STACK_NEW_IMAGE', (e) => {
        const image = e.detail && e.detail.image;
        if (!image) return;
        window.__shownImages.push({ quality: image.imageQualityStatus, rows: image.rows, columns: image.columns,
                                    frame: String(image.imageId || '').split('/studies/').pop() });
      }, true);
    });
    const page = await context.newPage();
    page.on('request', (r) => { if (r.url().includes('/studies') || r.url().includes('/wado')) report.requests++; });
    page.on('response', (r) => {
      if (r.status() >= 400) report.bad.push(`${r.status()} ${r.request().method()} ${r.url()}`);
      if (r.request().method() === 'POST') {
        report.posts.push({ status: r.status(), url: r.url(), authorization: r.request().headers()['authorization'] || null });
      }
      const range = r.request().headers()['range'];
      if (range) {
        report.ranged.push(`${r.status()} ${range} ${r.headers()['content-range'] || '-'} ${r.url()}`);
        report.rangedTypes.push(r.headers()['content-type'] || '-');
      }
    });
    page.on('requestfailed', (r) => {
      const why = r.failure() ? r.failure().errorText : '';
      if (why !== 'net::ERR_ABORTED') report.failed.push(`${why} ${r.method()} ${r.url()}`);
    });
    page.on('console', (m) => { if (m.type() === 'error') report.consoleErrors.push(m.text().slice(0, 500)); });
    page.on('pageerror', (e) => report.consoleErrors.push('pageerror: ' + String(e).slice(0, 500)));

    // With payload.trace: when each request of the last opening started and ended (ms after
    // the page load began), to see where the time to first image goes.
    const trace = payload.trace ? [] : null;
    if (trace) {
      page.on('request', (r) => r.__t0 = Date.now());
      page.on('requestfinished', (r) => trace.push([r.__t0 - trace.started, Date.now() - trace.started,
                                                    r.url().replace(payload.viewer, '').slice(0, 140)]));
    }
    for (const study of payload.open || []) {
      report.opened.push(await openStudy(page, payload, study, trace));
    }
    if (payload.reject) {
      report.reject = await rejectSeries(page, payload, report);
      report.reject.reopened = await openStudy(page, payload, payload.reject.study, null);
    }
    if (trace) report.trace = trace.sort((a, b) => a[0] - b[0]);
    if (payload.list) {
      if (payload.token) {
        // The token lives in OHIF's session (set by ?token= on the viewer route): go back to
        // the study list inside the app, as a user would.
        await page.click('[data-cy="return-to-work-list"]', { timeout: payload.timeoutMs });
      } else {
        await page.goto(payload.viewer + '/', { waitUntil: 'domcontentloaded', timeout: payload.timeoutMs });
      }
      const expected = payload.expectRows || 1;
      report.rows = await waitFor(async () => {
        const rows = await rowTexts(page);
        return rows.length >= expected ? rows : null;
      }, payload.timeoutMs, `${expected} study rows`);
      await quiet(page, payload.timeoutMs);
      report.rows = await rowTexts(page);
      if (payload.filter) {
        const input = page.locator('thead input, table input').first();
        await input.click();
        await input.pressSequentially(payload.filter.text, { delay: 30 });
        report.filtered = await waitFor(async () => {
          const rows = await rowTexts(page);
          return rows.length === 1 && rows[0][0] === payload.filter.expect ? rows : null;
        }, payload.timeoutMs, `the filtered row ${payload.filter.expect}`);
        await quiet(page, payload.timeoutMs);
      }
    }
  } catch (e) {
    report.error = String(e && e.stack ? e.stack : e).slice(0, 2000);
  } finally {
    await browser.close();
  }
  process.stdout.write(JSON.stringify(report) + '\n');
}

main();
