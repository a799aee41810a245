import os

from django.core.wsgi import get_wsgi_application

from nbcloud.datadir import prepare

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "nbcloud.settings")
# The web's start: the data directory before whitenoise looks in it.
prepare()
application = get_wsgi_application()
