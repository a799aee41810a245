"""`nbc`: the command line for the nbcloud API (HTTP only; never imports Django)."""
