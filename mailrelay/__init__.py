"""mailrelay: turns rejection mail into referrals, in the mail path."""

__version__ = "0.1.0"
