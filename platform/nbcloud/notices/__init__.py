"""Notices: telling people what needs them (a budget spent, an idle notebook about
to stop or stopped, a notebook FAILED, a host lost), by email and signed webhooks.

`services.notify` is the one way in: it records the notice and one delivery per
matching target in the caller's transaction and sends each through the dispatch
outbox; `notices.deliver` (control) sends it and retries with backoff.
"""
