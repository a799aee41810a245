"""A small OpenID Connect provider (django-oauth-toolkit) for the console's single
sign-on test: started by the test as a process of its own, with its own SQLite
database and an RSA key the test makes. Its users' Django groups are their `groups`
claim."""
