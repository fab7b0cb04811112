"""Shared pytest configuration: fixture modules are registered as plugins, one per concern."""

pytest_plugins = [
    "tests.fixtures_s3",
    "tests.fixtures_gateway",
    "tests.fixtures_postgres",
    "tests.fixtures_index",
    "tests.fixtures_security",
    "tests.fixtures_pacs",
    "tests.fixtures_viewer",
]
