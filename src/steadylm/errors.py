"""User-facing errors: the CLI prints the message as one line on stderr and exits 2."""


class SteadyLMError(Exception):
    """A problem with the user's input, phrased as one line that names it and the valid options."""


class DataError(SteadyLMError):
    """Missing, empty, binary or undecodable data, or data that does not match a checkpoint."""


class CheckpointError(SteadyLMError):
    """A checkpoint that is missing, corrupt, or incompatible with the requested run."""


class ConfigError(SteadyLMError):
    """A configuration problem, phrased as one line for the user."""
