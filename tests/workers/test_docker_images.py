"""Environment images: cached by what goes into them, and clear about what is missing."""

import pytest

from workers.runtimes import images

pytestmark = pytest.mark.e2e


def test_an_up_to_date_image_is_not_built_again(docker_image, docker_api):
    built = docker_api.images.get(docker_image)
    said = []
    assert images.build("conda", log=said.append) == docker_image
    assert said == [f"conda:py311: {docker_image} is up to date"]
    assert docker_api.images.get(docker_image).id == built.id
    assert built.labels[images.ENVIRONMENT_LABEL] == "conda:py311"
    assert built.labels[images.BUILD_KEY_LABEL]


def test_the_build_key_follows_requirements_python_and_base():
    key = images.build_key(("jupyterlab>=4.2,<5",), "3.11", "sha256:1")
    assert key == images.build_key(("jupyterlab>=4.2,<5",), "3.11", "sha256:1")
    assert key != images.build_key(("jupyterlab>=4.3,<5",), "3.11", "sha256:1")
    assert key != images.build_key(("jupyterlab>=4.2,<5",), "3.12", "sha256:1")
    assert key != images.build_key(("jupyterlab>=4.2,<5",), "3.11", "sha256:2")


def test_a_missing_base_image_names_the_script_that_builds_it(docker_api, settings):
    settings.NBCLOUD_DOCKER_BASE_IMAGE = "nbcloud/no-such-base:0"
    with pytest.raises(images.ImageBuildError, match="environments/base/build-base.sh"):
        images.build("conda")
