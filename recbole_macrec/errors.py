"""The two kinds of errors a user can fix, which the entry points report in one line (no
traceback): a setting that cannot be used, and an input file that cannot be used. The message
names the setting, or the file and the item or key."""


class SettingError(ValueError):
    """A setting (yaml, command line, config dict) that cannot be used."""


class DataError(ValueError):
    """An input file that is missing or malformed."""


def require_items(items, present, where, error=DataError, lacks="has no row", hint=""):
    """Raise ``error`` naming ``where`` (a file) and the first of ``items`` not in ``present``
    (a set, dict or index), with how many are missing; ``hint`` ends the message."""
    missing = [item for item in items if item not in present]
    if missing:
        raise error(f"{where}: item '{missing[0]}' of the dataset {lacks} ({len(missing)} missing){hint}")
