"""Media types, the transfer-syntax table and Accept negotiation (gateway/dicom/media.py)."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.dicom import media
from gateway.dicom.media import (
    APPLICATION_DICOM,
    APPLICATION_DICOM_JSON,
    APPLICATION_JSON,
    APPLICATION_OCTET_STREAM,
    AS_STORED,
    DEFAULT_TRANSFER_SYNTAX,
    DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
    EXPLICIT_VR_BIG_ENDIAN,
    EXPLICIT_VR_LITTLE_ENDIAN,
    HTJ2K,
    HTJ2K_LOSSLESS,
    IMAGE_DICOM_RLE,
    IMAGE_JLS,
    IMAGE_JP2,
    IMAGE_JPEG,
    IMAGE_JPHC,
    IMPLICIT_VR_LITTLE_ENDIAN,
    JPEG_2000,
    JPEG_2000_LOSSLESS,
    JPEG_BASELINE_8BIT,
    JPEG_EXTENDED_12BIT,
    JPEG_LOSSLESS,
    JPEG_LOSSLESS_SV1,
    JPEG_LS_LOSSLESS,
    JPEG_LS_NEAR_LOSSLESS,
    MPEG4_HP41,
    RLE_LOSSLESS,
    TRANSFER_SYNTAXES,
    VIDEO_H265,
    MediaRange,
    Negotiated,
    negotiate_bulkdata,
    negotiate_frames,
    negotiate_instances,
    negotiate_metadata,
    negotiate_qido,
    parse_accept,
    parse_content_type,
    part_content_type,
)
from gateway.dicom.uids import is_valid_uid
from gateway.errors import BadRequest, NotAcceptable

OHIF_FRAMES_UNQUOTED = "multipart/related; type=application/octet-stream; transfer-syntax=*"
OHIF_FRAMES_QUOTED = 'multipart/related; type="application/octet-stream"; transfer-syntax="*"'
ELE, ILE = EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN
TRANSCODER = frozenset({AS_STORED, ELE, ILE})


def multipart(media_type: str, syntax: str) -> Negotiated:
    return Negotiated(media_type, syntax, True)


# --- the table --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("uid", "encapsulated", "lossy", "frame_type"),
    [
        (IMPLICIT_VR_LITTLE_ENDIAN, False, False, APPLICATION_OCTET_STREAM),
        (EXPLICIT_VR_LITTLE_ENDIAN, False, False, APPLICATION_OCTET_STREAM),
        (DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN, False, False, APPLICATION_OCTET_STREAM),
        (EXPLICIT_VR_BIG_ENDIAN, False, False, APPLICATION_OCTET_STREAM),
        (JPEG_BASELINE_8BIT, True, True, IMAGE_JPEG),
        (JPEG_EXTENDED_12BIT, True, True, IMAGE_JPEG),
        (JPEG_LOSSLESS, True, False, IMAGE_JPEG),
        (JPEG_LOSSLESS_SV1, True, False, IMAGE_JPEG),
        (JPEG_LS_LOSSLESS, True, False, IMAGE_JLS),
        (JPEG_LS_NEAR_LOSSLESS, True, True, IMAGE_JLS),
        (JPEG_2000_LOSSLESS, True, False, IMAGE_JP2),
        (JPEG_2000, True, True, IMAGE_JP2),
        (HTJ2K_LOSSLESS, True, False, IMAGE_JPHC),
        ("1.2.840.10008.1.2.4.202", True, False, IMAGE_JPHC),
        (HTJ2K, True, True, IMAGE_JPHC),
        (RLE_LOSSLESS, True, False, IMAGE_DICOM_RLE),
        ("1.2.840.10008.1.2.4.100", True, True, "video/mpeg"),
        (MPEG4_HP41, True, True, "video/mp4"),
        ("1.2.840.10008.1.2.4.107", True, True, VIDEO_H265),
    ],
)
def test_transfer_syntax_table(uid: str, encapsulated: bool, lossy: bool, frame_type: str) -> None:
    assert media.is_encapsulated(uid) is encapsulated
    assert media.is_lossy(uid) is lossy
    assert media.frame_media_type(uid) == frame_type
    row = media.transfer_syntax(uid)
    assert row is not None
    assert row.uid == uid
    assert row.name


def test_table_is_consistent() -> None:
    for uid, row in TRANSFER_SYNTAXES.items():
        assert is_valid_uid(uid)
        assert row.uid == uid
        # every media type of the table has a default syntax, and that default belongs to it
        default = DEFAULT_TRANSFER_SYNTAX[row.media_type.lower()]
        assert TRANSFER_SYNTAXES[default].media_type == row.media_type
        assert not TRANSFER_SYNTAXES[default].lossy or row.media_type.startswith("video/")


def test_unknown_syntax_is_treated_conservatively() -> None:
    unknown = "1.2.3.4.5"
    assert media.transfer_syntax(unknown) is None
    assert media.is_encapsulated(unknown)
    assert media.is_lossy(unknown)
    assert media.frame_media_type(unknown) == APPLICATION_OCTET_STREAM


def test_defaults_per_ps3_18_table_8_7_3_5() -> None:
    assert DEFAULT_TRANSFER_SYNTAX[IMAGE_JPEG] == JPEG_LOSSLESS_SV1
    assert DEFAULT_TRANSFER_SYNTAX[IMAGE_JLS] == JPEG_LS_LOSSLESS
    assert DEFAULT_TRANSFER_SYNTAX[IMAGE_JP2] == JPEG_2000_LOSSLESS
    assert DEFAULT_TRANSFER_SYNTAX[IMAGE_DICOM_RLE] == RLE_LOSSLESS
    assert DEFAULT_TRANSFER_SYNTAX[IMAGE_JPHC] == HTJ2K_LOSSLESS
    assert DEFAULT_TRANSFER_SYNTAX[APPLICATION_OCTET_STREAM] == ELE


def test_normalize_media_type() -> None:
    assert media.normalize_media_type(" Image/X-JLS ") == IMAGE_JLS
    assert media.normalize_media_type("image/x-dicom-rle") == IMAGE_DICOM_RLE
    assert media.normalize_media_type("IMAGE/JPEG") == IMAGE_JPEG


# --- parse_accept -----------------------------------------------------------------------------


def test_parse_accept_missing_or_blank() -> None:
    assert parse_accept(None) == ()
    assert parse_accept("") == ()
    assert parse_accept("  ,\t, ") == ()


@pytest.mark.parametrize("header", [OHIF_FRAMES_UNQUOTED, OHIF_FRAMES_QUOTED])
def test_parse_accept_ohif_forms(header: str) -> None:
    (r,) = parse_accept(header)
    assert r.media_type == "multipart/related"
    assert r.param("type") == APPLICATION_OCTET_STREAM
    assert r.param("transfer-syntax") == "*"
    assert r.q == 1.0


def test_parse_accept_order_q_then_specificity_then_position() -> None:
    ranges = parse_accept("a/b;q=0.5, */*;q=0.5, c/*, c/d, c/d;x=1, e/f;q=0, g/h;q=0.500")
    assert [(r.media_type, r.params, r.q) for r in ranges] == [
        ("c/d", (("x", "1"),), 1.0),
        ("c/d", (), 1.0),
        ("c/*", (), 1.0),
        ("a/b", (), 0.5),
        ("g/h", (), 0.5),
        ("*/*", (), 0.5),
        ("e/f", (), 0.0),
    ]


def test_parse_accept_case_whitespace_and_quoting() -> None:
    (r,) = parse_accept(' \tMultipart/Related ;TYPE = "Application/DICOM" ;  Transfer-Syntax="1.2.840.10008.1.2.1" ')
    assert r.media_type == "multipart/related"
    assert r.param("type") == APPLICATION_DICOM  # a media type: lower-cased
    assert r.param("transfer-syntax") == ELE


def test_parse_accept_comma_and_semicolon_inside_quotes() -> None:
    ranges = parse_accept('a/b; x="1,2;3", c/d; y="say \\"hi\\", ok"')
    assert [r.media_type for r in ranges] == ["a/b", "c/d"]
    assert ranges[0].param("x") == "1,2;3"
    assert ranges[1].param("y") == 'say "hi", ok'


def test_parse_accept_parameters_after_q_still_count() -> None:
    (r,) = parse_accept('multipart/related; q=0.8; type="application/dicom"')
    assert r.q == 0.8
    assert r.param("type") == APPLICATION_DICOM


@pytest.mark.parametrize(
    "junk",
    [
        "garbage",
        "a/",
        "/b",
        "*/json",
        "a/b; q=2",
        "a/b; q=x",
        "a/b; q=-1",
        "a/b; noequals",
        "a/b; x=1; x=2",
        'a/b; x="unterminated',
        'a/b; x="a"b',
        "a/b; x=two words",
        "a b/c",
        "a/b; =1",
        "\x00/\x01",
        "é/ü",
    ],
)
def test_parse_accept_skips_junk_entries(junk: str) -> None:
    ranges = parse_accept(f"application/dicom+json, {junk}")
    assert [r.media_type for r in ranges] == ["application/dicom+json"]
    with pytest.raises(BadRequest, match="unparseable Accept"):
        parse_accept(junk)


def test_parse_accept_unterminated_quote_swallows_rest_only() -> None:
    ranges = parse_accept('a/b, c/d; x="oops, e/f')
    assert [r.media_type for r in ranges] == ["a/b"]


def test_media_range_helpers() -> None:
    r = MediaRange("image", "*")
    assert r.matches("image/jpeg")
    assert not r.matches("application/json")
    assert MediaRange("*", "*").matches("x/y")
    assert MediaRange("*", "*").specificity == 0
    assert r.specificity == 1
    assert MediaRange("a", "b").specificity == 2
    assert MediaRange("a", "b", (("k", "v"),)).specificity == 3
    assert MediaRange("a", "b").param("k") is None


_token = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-+.", min_size=1, max_size=8)
_value = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=12)


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


@given(
    st.lists(
        st.tuples(
            _token,
            _token,
            st.dictionaries(_token.filter(lambda n: n != "q"), _value, max_size=3),
            st.sampled_from(["1", "0.5", "0.25", "0", "1.000", "0.001"]),
            st.booleans(),
            st.sampled_from(["", " ", "\t", "  "]),
        ),
        min_size=1,
        max_size=5,
    )
)
def test_parse_accept_reads_back_what_was_written(
    entries: list[tuple[str, str, dict[str, str], str, bool, str]],
) -> None:
    rendered = []
    for main, sub, params, q, quote_all, ws in entries:
        text = f"{main}/{sub}"
        for name, value in params.items():
            needs_quotes = quote_all or not value or any(c in value for c in ' ",;\\')
            text += f"{ws};{ws}{name}={_quote(value) if needs_quotes else value}"
        text += f";q={q}"
        rendered.append(text)
    ranges = parse_accept(f",{entries[0][5]}".join(rendered))
    assert len(ranges) == len(entries)
    by_position = sorted(ranges, key=lambda r: r.position)
    for r, (main, sub, params, q, _, _) in zip(by_position, entries, strict=True):
        assert r.media_type == f"{main}/{sub}"
        expected = {k: (media.normalize_media_type(v) if k == "type" else v) for k, v in params.items()}
        assert dict(r.params) == expected
        assert r.q == float(q)


@given(st.text(max_size=200))
def test_parse_accept_raises_only_bad_request(header: str) -> None:
    with contextlib.suppress(BadRequest):
        parse_accept(header)


@given(st.text(alphabet=st.sampled_from(list('*/;=,"\\ abqtypeimgjson-0.1')), max_size=80))
def test_negotiation_raises_only_gateway_errors(header: str) -> None:
    for negotiate in (negotiate_instances, negotiate_frames, negotiate_bulkdata, negotiate_metadata):
        try:
            result = negotiate(header)
        except (BadRequest, NotAcceptable):
            continue
        assert isinstance(result, Negotiated)


# --- parse_content_type -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (
            'multipart/related; type="application/dicom"; boundary=abc123',
            ("multipart/related", {"type": "application/dicom", "boundary": "abc123"}),
        ),
        (
            "Multipart/Related; Type=Application/Dicom; Boundary=AbC",
            ("multipart/related", {"type": "application/dicom", "boundary": "AbC"}),
        ),
        (
            'multipart/related;boundary="a b:c=d,e;f";type=application/dicom',
            ("multipart/related", {"type": "application/dicom", "boundary": "a b:c=d,e;f"}),
        ),
        ("application/dicom", ("application/dicom", {})),
        ("application/dicom+json; charset=utf-8", ("application/dicom+json", {"charset": "utf-8"})),
    ],
)
def test_parse_content_type(value: str, expected: tuple[str, dict[str, str]]) -> None:
    assert parse_content_type(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        "   ",
        "multipart",
        "multipart/related; boundary",
        "multipart/related; boundary=a; boundary=b",
        'multipart/related; boundary="open',
        "application/dicom, application/json",
        "*/*",
        "multipart/*",
        "a/b; x=two words",
    ],
)
def test_parse_content_type_rejects_garbage(value: str | None) -> None:
    with pytest.raises(BadRequest):
        parse_content_type(value)


@given(st.text(max_size=120))
def test_parse_content_type_raises_only_bad_request(value: str) -> None:
    with contextlib.suppress(BadRequest):
        parse_content_type(value)


# --- part_content_type ------------------------------------------------------------------------


def test_part_content_type_exact() -> None:
    assert part_content_type(APPLICATION_DICOM, ELE) == "application/dicom; transfer-syntax=1.2.840.10008.1.2.1"
    assert part_content_type(APPLICATION_DICOM_JSON) == "application/dicom+json"
    with pytest.raises(ValueError, match="transfer syntax"):
        part_content_type(APPLICATION_DICOM, "*")


def test_negotiated_part_content_type() -> None:
    stored = multipart(APPLICATION_OCTET_STREAM, AS_STORED)
    assert stored.as_stored
    assert stored.part_content_type(JPEG_BASELINE_8BIT) == (
        "application/octet-stream; transfer-syntax=1.2.840.10008.1.2.4.50"
    )
    with pytest.raises(ValueError, match="actual transfer syntax"):
        stored.part_content_type()
    fixed = multipart(APPLICATION_DICOM, ELE)
    assert not fixed.as_stored
    assert fixed.part_content_type() == "application/dicom; transfer-syntax=1.2.840.10008.1.2.1"
    assert Negotiated(APPLICATION_DICOM_JSON, None, False).part_content_type() == APPLICATION_DICOM_JSON


# --- negotiate_instances ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "accept",
    [None, "", "*/*", "multipart/related", "multipart/*", "multipart/related; q=0.9", "text/html, */*;q=0.8"],
)
def test_instances_generic_accept_sends_as_stored(accept: str | None) -> None:
    assert negotiate_instances(accept) == multipart(APPLICATION_DICOM, AS_STORED)


@pytest.mark.parametrize(
    "accept",
    [
        'multipart/related; type="application/dicom"; transfer-syntax=*',
        "multipart/related; type=application/dicom; transfer-syntax=*",
        'multipart/related; type="application/dicom"; transfer-syntax="*"',
        "multipart/related; transfer-syntax=*",
    ],
)
def test_instances_transfer_syntax_star(accept: str) -> None:
    assert negotiate_instances(accept, stored_syntaxes={JPEG_2000}) == multipart(APPLICATION_DICOM, AS_STORED)


def test_instances_no_transfer_syntax_means_explicit_little_endian() -> None:
    accept = 'multipart/related; type="application/dicom"'
    assert negotiate_instances(accept, supported=TRANSCODER) == multipart(APPLICATION_DICOM, ELE)
    # servable without transcoding when every instance already is ELE
    assert negotiate_instances(accept, stored_syntaxes={ELE}) == multipart(APPLICATION_DICOM, ELE)
    # PS3.18 8.7.3: lossy-only data may be sent in its lossy syntax
    assert negotiate_instances(accept, stored_syntaxes={JPEG_BASELINE_8BIT}) == multipart(APPLICATION_DICOM, AS_STORED)
    with pytest.raises(NotAcceptable) as info:
        negotiate_instances(accept, stored_syntaxes={JPEG_2000_LOSSLESS, ELE})
    assert 'type="application/dicom"' in info.value.reason
    assert accept in info.value.reason
    assert JPEG_2000_LOSSLESS in info.value.reason
    assert info.value.status == 406


def test_instances_explicit_uid() -> None:
    accept = f'multipart/related; type="application/dicom"; transfer-syntax={ILE}'
    assert negotiate_instances(accept, supported=TRANSCODER) == multipart(APPLICATION_DICOM, ILE)
    assert negotiate_instances(accept, stored_syntaxes=[ILE, ILE]) == multipart(APPLICATION_DICOM, ILE)
    with pytest.raises(NotAcceptable):
        negotiate_instances(accept, stored_syntaxes=[ILE, ELE])


def test_instances_unknown_syntax_is_406_naming_request_and_offer() -> None:
    accept = 'multipart/related; type="application/dicom"; transfer-syntax=1.2.3.4.5.6'
    with pytest.raises(NotAcceptable) as info:
        negotiate_instances(accept, supported=TRANSCODER)
    reason = info.value.reason
    assert "1.2.3.4.5.6" in reason
    assert ELE in reason
    assert ILE in reason
    assert "*" in reason


@pytest.mark.parametrize(
    "accept",
    [
        "application/dicom",
        'multipart/related; type="application/dicom+xml"',
        'multipart/related; type="application/octet-stream"',
        "application/dicom+json",
        "image/jpeg",
    ],
)
def test_instances_other_representations_are_406(accept: str) -> None:
    with pytest.raises(NotAcceptable):
        negotiate_instances(accept, supported=TRANSCODER)


def test_instances_q_values() -> None:
    ts = f'multipart/related; type="application/dicom"; transfer-syntax={ILE}'
    star = 'multipart/related; type="application/dicom"; transfer-syntax=*'
    assert negotiate_instances(f"{ts};q=0.9, {star};q=0.5", supported=TRANSCODER).transfer_syntax == ILE
    assert negotiate_instances(f"{ts};q=0.4, {star};q=0.5", supported=TRANSCODER).transfer_syntax == AS_STORED
    # the preferred one cannot be produced: the next acceptable one is used
    unknown = 'multipart/related; type="application/dicom"; transfer-syntax=1.2.3'
    assert negotiate_instances(f"{unknown}, {ts};q=0.1", supported=TRANSCODER).transfer_syntax == ILE


def test_instances_q_zero_excludes() -> None:
    refuse_star = 'multipart/related; type="application/dicom"; transfer-syntax=*; q=0'
    assert negotiate_instances(f"{refuse_star}, */*", supported=TRANSCODER).transfer_syntax == ELE
    got = negotiate_instances(f"{refuse_star}, */*", stored_syntaxes={ELE}, supported=TRANSCODER)
    assert got.transfer_syntax == ELE  # refusing "*" does not refuse ELE itself
    with pytest.raises(NotAcceptable):
        negotiate_instances(refuse_star)
    with pytest.raises(NotAcceptable):
        negotiate_instances("*/*;q=0")
    # refusing JPEG baseline excludes sending JPEG-baseline data as stored
    refuse_jpeg = f'multipart/related; type="application/dicom"; transfer-syntax={JPEG_BASELINE_8BIT};q=0'
    got = negotiate_instances(f"{refuse_jpeg}, */*", stored_syntaxes={JPEG_BASELINE_8BIT}, supported=TRANSCODER)
    assert got.transfer_syntax == ELE
    # ... while a more specific positive range beats a less specific refusal
    ele = 'multipart/related; type="application/dicom"'
    assert negotiate_instances(f"*/*;q=0, {ele}", supported=TRANSCODER).transfer_syntax == ELE


def test_instances_generic_falls_back_to_producible_syntaxes() -> None:
    assert negotiate_instances("*/*", supported={ELE}).transfer_syntax == ELE
    assert negotiate_instances("*/*", supported={JPEG_2000_LOSSLESS}).transfer_syntax == JPEG_2000_LOSSLESS


# --- negotiate_frames -------------------------------------------------------------------------


@pytest.mark.parametrize("accept", [OHIF_FRAMES_UNQUOTED, OHIF_FRAMES_QUOTED])
@pytest.mark.parametrize("stored", [ELE, ILE, JPEG_BASELINE_8BIT, JPEG_2000_LOSSLESS, HTJ2K, RLE_LOSSLESS])
def test_frames_ohif_forms_send_as_stored(accept: str, stored: str) -> None:
    got = negotiate_frames(accept, stored_syntaxes={stored})
    assert got == multipart(APPLICATION_OCTET_STREAM, AS_STORED)
    assert got.part_content_type(stored) == f"application/octet-stream; transfer-syntax={stored}"


@pytest.mark.parametrize("accept", [None, "*/*", "multipart/related", "multipart/*"])
def test_frames_generic_is_octet_stream_as_stored(accept: str | None) -> None:
    assert negotiate_frames(accept) == multipart(APPLICATION_OCTET_STREAM, AS_STORED)


def test_frames_octet_stream_without_syntax_is_uncompressed() -> None:
    for accept in (
        "multipart/related; type=application/octet-stream",
        'multipart/related; type="application/octet-stream"',
    ):
        assert negotiate_frames(accept, supported=TRANSCODER) == multipart(APPLICATION_OCTET_STREAM, ELE)
        # frames stored Implicit VR / deflated are byte-identical to ELE frames
        for stored in (ILE, ELE, DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN):
            assert negotiate_frames(accept, stored_syntaxes={stored}).transfer_syntax == ELE
        # big endian frames are not
        with pytest.raises(NotAcceptable):
            negotiate_frames(accept, stored_syntaxes={EXPLICIT_VR_BIG_ENDIAN})
        # lossy-only pixel data may be sent as is (PS3.18 8.7.3)
        assert negotiate_frames(accept, stored_syntaxes={JPEG_BASELINE_8BIT}).transfer_syntax == AS_STORED
        with pytest.raises(NotAcceptable):
            negotiate_frames(accept, stored_syntaxes={JPEG_2000_LOSSLESS})


def test_frames_octet_stream_with_explicit_uid() -> None:
    accept = f"multipart/related; type=application/octet-stream; transfer-syntax={ELE}"
    assert negotiate_frames(accept, stored_syntaxes={ILE}).transfer_syntax == ELE
    with pytest.raises(NotAcceptable):
        negotiate_frames(accept, stored_syntaxes={JPEG_2000})


def test_frames_compressed_media_types() -> None:
    jpeg = 'multipart/related; type="image/jpeg"'
    # PS3.18 Table 8.7.3-5 default for image/jpeg: JPEG Lossless SV1
    assert negotiate_frames(jpeg, supported={AS_STORED, JPEG_LOSSLESS_SV1}) == multipart(IMAGE_JPEG, JPEG_LOSSLESS_SV1)
    # stored as some JPEG already: send it as stored, labelled image/jpeg
    got = negotiate_frames(jpeg, stored_syntaxes={JPEG_BASELINE_8BIT})
    assert got == multipart(IMAGE_JPEG, AS_STORED)
    assert got.part_content_type(JPEG_BASELINE_8BIT) == "image/jpeg; transfer-syntax=1.2.840.10008.1.2.4.50"
    with pytest.raises(NotAcceptable):
        negotiate_frames(jpeg, stored_syntaxes={JPEG_2000})
    # lossy JPEG is sent as it is even when the default (lossless) syntax could be produced;
    # lossless JPEG that is not the default is re-encoded when possible, else sent as stored
    can_sv1 = {AS_STORED, JPEG_LOSSLESS_SV1}
    assert negotiate_frames(jpeg, stored_syntaxes={JPEG_BASELINE_8BIT}, supported=can_sv1).as_stored
    assert (
        negotiate_frames(jpeg, stored_syntaxes={JPEG_LOSSLESS}, supported=can_sv1).transfer_syntax == JPEG_LOSSLESS_SV1
    )
    assert negotiate_frames(jpeg, stored_syntaxes={JPEG_LOSSLESS}).as_stored
    with pytest.raises(NotAcceptable):
        negotiate_frames(jpeg, stored_syntaxes={JPEG_BASELINE_8BIT, JPEG_2000})
    named = f'multipart/related; type="image/jpeg"; transfer-syntax={JPEG_BASELINE_8BIT}'
    assert negotiate_frames(named, stored_syntaxes={JPEG_BASELINE_8BIT}) == multipart(IMAGE_JPEG, JPEG_BASELINE_8BIT)
    # a UID that is not a JPEG syntax is not acceptable under image/jpeg
    wrong = f'multipart/related; type="image/jpeg"; transfer-syntax={JPEG_2000}'
    with pytest.raises(NotAcceptable):
        negotiate_frames(wrong, stored_syntaxes={JPEG_2000}, supported={AS_STORED, JPEG_2000})
    star = 'multipart/related; type="image/jp2"; transfer-syntax=*'
    assert negotiate_frames(star, stored_syntaxes={JPEG_2000}) == multipart(IMAGE_JP2, AS_STORED)
    with pytest.raises(NotAcceptable):
        negotiate_frames(star, stored_syntaxes={JPEG_BASELINE_8BIT})


def test_frames_legacy_media_type_aliases() -> None:
    got = negotiate_frames('multipart/related; type="image/x-jls"', stored_syntaxes={JPEG_LS_LOSSLESS})
    assert got == multipart(IMAGE_JLS, JPEG_LS_LOSSLESS)


def test_frames_video_media_type_spelling() -> None:
    hevc = "1.2.840.10008.1.2.4.107"
    got = negotiate_frames("multipart/related; type=video/h265", stored_syntaxes={hevc})
    assert got == multipart(VIDEO_H265, AS_STORED)
    got = negotiate_frames(f"multipart/related; type=video/h265; transfer-syntax={hevc}", stored_syntaxes={hevc})
    assert got == multipart(VIDEO_H265, hevc)
    assert got.part_content_type() == f"video/H265; transfer-syntax={hevc}"


def test_frames_unknown_syntax_is_406() -> None:
    with pytest.raises(NotAcceptable) as info:
        negotiate_frames(
            "multipart/related; type=application/octet-stream; transfer-syntax=1.2.3.999",
            stored_syntaxes={JPEG_BASELINE_8BIT},
            supported=TRANSCODER,
        )
    assert "1.2.3.999" in info.value.reason
    assert 'type="image/jpeg"' in info.value.reason  # the as-stored alternative is named


@pytest.mark.parametrize(
    "accept",
    ["application/octet-stream", "application/dicom+json", 'multipart/related; type="application/dicom"'],
)
def test_frames_single_part_octet_stream_and_others_are_406(accept: str) -> None:
    with pytest.raises(NotAcceptable):
        negotiate_frames(accept, stored_syntaxes={JPEG_BASELINE_8BIT}, supported=TRANSCODER)


def test_frames_single_part_image_media_types() -> None:
    """One frame as its bare bitstream (PS3.18 8.7.3.3.2), with the multipart rules."""
    got = negotiate_frames("image/jpeg", stored_syntaxes={JPEG_BASELINE_8BIT})
    assert got == Negotiated(IMAGE_JPEG, AS_STORED, False)
    can = {AS_STORED, ELE, JPEG_LS_LOSSLESS, JPEG_2000_LOSSLESS, JPEG_BASELINE_8BIT}
    assert negotiate_frames("image/jls", stored_syntaxes={ELE}, supported=can) == Negotiated(
        IMAGE_JLS, JPEG_LS_LOSSLESS, False
    )
    assert negotiate_frames("image/x-jls", stored_syntaxes={ELE}, supported=can).transfer_syntax == JPEG_LS_LOSSLESS
    assert negotiate_frames("image/jp2", stored_syntaxes={ELE}, supported=can) == Negotiated(
        IMAGE_JP2, JPEG_2000_LOSSLESS, False
    )
    # image/jpeg alone means JPEG Lossless SV1 (not producible here): never silently lossy
    with pytest.raises(NotAcceptable):
        negotiate_frames("image/jpeg", stored_syntaxes={ELE}, supported=can)
    named = f"image/jpeg; transfer-syntax={JPEG_BASELINE_8BIT}"
    assert negotiate_frames(named, stored_syntaxes={ELE}, supported=can) == Negotiated(
        IMAGE_JPEG, JPEG_BASELINE_8BIT, False
    )


def test_generic_accept_never_falls_back_to_a_lossy_syntax() -> None:
    lossy_only = {JPEG_BASELINE_8BIT}
    assert negotiate_frames("*/*", stored_syntaxes={ELE}, supported=lossy_only | {ELE}).transfer_syntax == ELE
    with pytest.raises(NotAcceptable):
        negotiate_instances("*/*", stored_syntaxes={JPEG_2000_LOSSLESS}, supported=lossy_only)


def test_frames_q_values() -> None:
    accept = f'multipart/related; type="image/jpeg";q=0.9, {OHIF_FRAMES_QUOTED};q=0.5'
    assert negotiate_frames(accept, stored_syntaxes={JPEG_BASELINE_8BIT}).media_type == IMAGE_JPEG
    assert negotiate_frames(accept, stored_syntaxes={JPEG_2000}).media_type == APPLICATION_OCTET_STREAM
    with pytest.raises(NotAcceptable):
        negotiate_frames(f"{OHIF_FRAMES_QUOTED};q=0")


# --- negotiate_bulkdata -----------------------------------------------------------------------


def test_bulkdata() -> None:
    assert negotiate_bulkdata(None) == multipart(APPLICATION_OCTET_STREAM, AS_STORED)
    assert negotiate_bulkdata("*/*") == multipart(APPLICATION_OCTET_STREAM, AS_STORED)
    assert negotiate_bulkdata("multipart/related; type=application/octet-stream") == multipart(
        APPLICATION_OCTET_STREAM, ELE
    )
    assert negotiate_bulkdata(OHIF_FRAMES_QUOTED) == multipart(APPLICATION_OCTET_STREAM, AS_STORED)
    assert negotiate_bulkdata("application/octet-stream") == Negotiated(APPLICATION_OCTET_STREAM, ELE, False)
    assert negotiate_bulkdata("application/octet-stream; transfer-syntax=*") == Negotiated(
        APPLICATION_OCTET_STREAM, AS_STORED, False
    )
    for accept in ("application/dicom+json", 'multipart/related; type="image/jpeg"'):
        with pytest.raises(NotAcceptable):
            negotiate_bulkdata(accept)


# --- negotiate_metadata / negotiate_qido ------------------------------------------------------


@pytest.mark.parametrize("negotiate", [negotiate_metadata, negotiate_qido])
def test_json_negotiation(negotiate: object) -> None:
    assert callable(negotiate)
    dicom_json = Negotiated(APPLICATION_DICOM_JSON, None, False)
    for accept in (None, "", "*/*", "application/*", "application/dicom+json", "Application/DICOM+JSON; charset=utf-8"):
        assert negotiate(accept) == dicom_json
    assert negotiate("application/json") == Negotiated(APPLICATION_JSON, None, False)
    assert negotiate("application/json;q=0.5, application/dicom+json") == dicom_json
    assert negotiate("application/dicom+json;q=0, */*") == Negotiated(APPLICATION_JSON, None, False)
    for accept in (
        'multipart/related; type="application/dicom+xml"',
        "application/dicom+xml",
        "text/html",
        "application/dicom+json;q=0",
    ):
        with pytest.raises(NotAcceptable, match="application/dicom\\+json"):
            negotiate(accept)
    with pytest.raises(BadRequest):
        negotiate("!!!")
