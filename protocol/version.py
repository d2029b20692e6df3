"""Protocol versioning: readers accept messages of their own major version."""

PROTOCOL_VERSION = 1
SUPPORTED_VERSIONS = frozenset({1})


def is_supported(version: int) -> bool:
    return version in SUPPORTED_VERSIONS
