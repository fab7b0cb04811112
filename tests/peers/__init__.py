"""Real peer servers (SeaweedFS, PACS) started by the tests on free ports."""
