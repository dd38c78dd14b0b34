"""The two kinds of errors a user can fix, which the entry points report in one line (no
traceback): a setting that cannot be used, and an input file that cannot be used. The message
names the setting, or the file and the item or key."""


class SettingError(ValueError):
    """A setting (yaml, command line, config dict) that cannot be used."""


class DataError(ValueError):
    """An input file that is missing or malformed."""
