from groker_common.gunicorn_defaults import *  # noqa: F403
from groker_common.gunicorn_defaults import bind_on, json_logs

logconfig_dict = json_logs("client")
bind = bind_on(8002)
workers = 1  # one inbox per replica; scale with replicas, not workers
