"""The one error type a user can cause: bad paths, parameters, images, data files."""


class UserError(Exception):
    """A problem with the user's input, told in one sentence that names the thing.

    The CLI prints it without a traceback and exits non-zero; programming errors stay loud.
    """
