"""The one exception type that the command line turns into a one-line error and exit 2."""


class HerdInputError(Exception):
    """Bad input from the user: a file, a field or a value. The message is one line
    naming the problem (file, field, value); the CLI prints it and exits with 2."""
