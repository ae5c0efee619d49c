"""python -m mailrelay: the command line."""

import sys

from mailrelay.cli import main

sys.exit(main())
