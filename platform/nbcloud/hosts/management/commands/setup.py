"""Make this machine's data directory ready (nbcloud.datadir): once, or again."""

from django.conf import settings
from django.core.management.base import BaseCommand

from nbcloud.datadir import prepare


class Command(BaseCommand):
    help = (
        "Make the data directory (NBCLOUD_DATA_DIR, mode 0700) and, unless SECRET_KEY is set, "
        "generate the secret key into it. Safe to repeat: what exists is kept."
    )
    # What the checks ask for is what this makes.
    requires_system_checks = []

    def handle(self, *args, **options):
        made = prepare()
        if options["verbosity"]:
            for path in made:
                self.stdout.write(f"made {path}")
            self.stdout.write(f"data directory ready: {settings.DATA_DIR}")
