"""The one exception type users see: a one-line message that names the bad thing and what is valid."""


class VlatrimError(Exception):
    """A user-facing error. The CLI prints ``vlatrim: <message>`` and exits with status 2.

    Messages are one line, quote the offending value and say what would be valid, e.g.
    ``unknown task 'reech-v3'; valid: reach-v3, push-v3, ... (or mt10, mt50, easy, ...)``.
    """
