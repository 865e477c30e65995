# The broker's gunicorn settings (services/broker/gunicorn.conf.py) for the baseline app,
# line for line: the shared knobs, one gevent worker, and the same JSON log config (which
# also decides whether gunicorn writes an access line per request), so that the baseline
# differs from the broker only in the app.
from groker_common.gunicorn_defaults import *  # noqa: F403
from groker_common.gunicorn_defaults import bind_on, json_logs

logconfig_dict = json_logs("baseline")
bind = bind_on(8000)
workers = 1
