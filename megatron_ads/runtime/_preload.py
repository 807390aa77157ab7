"""The first module the workers' fork server imports (``runtime.launch.PRELOAD``).

The fork server is a fresh interpreter that imports torch, megatron-core and transformers once; the
warnings megatron-core gives at import and transformers' progress-bar setting are decided there, so the
project's logging set-up (level and ``--json`` from the CLI's ``MEGATRON_ADS_LOG_*`` variables, the
third-party warning filters) has to happen in that process before the heavy imports. Workers forked from
it inherit the result (and set up again from their caller's environment, see ``launch``).
"""

import os

from megatron_ads.runtime.log import DIR_ENV, setup_from_env

setup_from_env({k: v for k, v in os.environ.items() if k != DIR_ENV})  # no per-rank file for the server itself
