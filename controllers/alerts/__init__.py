"""Storage alerts: every weights location measured, its usage held against a threshold, and
each crossing recorded (an ALERT event, a webhook message) by the leading replica."""
