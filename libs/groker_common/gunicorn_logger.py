"""gunicorn's logger, with access logging only when asked for (GUNICORN_ACCESSLOG).

gunicorn turns access logging on whenever a `logconfig_dict` is set, and we set one to
make its logs JSON; it then formats an access line for every request, which on the
publish route cost over a tenth of the broker's CPU (measured with py-spy)."""

from gunicorn.glogging import Logger


class QuietAccessLogger(Logger):
    def _compute_access_log_enabled(self) -> bool:
        return bool(self.cfg.accesslog)
