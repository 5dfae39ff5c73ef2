"""The trusted side: supervisor main, launcher, broker and policy."""
