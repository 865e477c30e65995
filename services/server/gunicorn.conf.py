from groker_common.gunicorn_defaults import *  # noqa: F403
from groker_common.gunicorn_defaults import bind_on, json_logs

logconfig_dict = json_logs("server")
bind = bind_on(8001)
workers = 1  # the publishing loop and its stats live in one process
