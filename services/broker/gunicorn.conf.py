from groker_common.gunicorn_defaults import *  # noqa: F403
from groker_common.gunicorn_defaults import bind_on, json_logs

logconfig_dict = json_logs("broker")
bind = bind_on(8000)
# Exactly one worker: that process owns the queue, the subscriber registry and the lanes.
# A second worker would be a second, independent queue, and ordering would be lost.
workers = 1
