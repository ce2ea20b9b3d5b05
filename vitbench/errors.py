"""Expected errors. The CLI turns each into one line and an exit code; --debug shows the traceback."""


class VitbenchError(Exception):
    """Base class of errors meant for the user: the message is the whole story."""

    exit_code = 2


class SuiteError(VitbenchError):
    """A suite file is malformed or names something that does not exist."""


class DeviceError(VitbenchError):
    """The requested device is not there."""


class InputError(VitbenchError):
    """A results file, directory or option is unusable."""
