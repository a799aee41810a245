"""Build the docker runtime's environment images on this host."""

from django.core.management.base import CommandError

from .buildenvs import Command as BuildEnvsCommand


class Command(BuildEnvsCommand):
    help = (
        "Build the images the docker runtime runs editors from, on the base image "
        "NBCLOUD_DOCKER_BASE_IMAGE (environments/base/build-base.sh), with no registry "
        "and no network inside the build. Without arguments, builds the default "
        "environment (conda)."
    )

    def build(self, framework_id: str, version: str, force: bool, log) -> None:
        import docker

        from workers.runtimes import images

        try:
            images.build(framework_id, version, force=force, log=log)
        except images.ImageBuildError as exc:
            raise CommandError(str(exc)) from exc
        except docker.errors.DockerException as exc:
            raise CommandError(f"cannot reach the Docker Engine: {exc}") from exc
