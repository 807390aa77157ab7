import sys

from megatron_ads.cli import main

sys.exit(main())
