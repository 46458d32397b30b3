from kaibuild.imageref import ImageRef, local_name, mirrored


def test_docker_hub_short_names_are_normalised() -> None:
    ref = ImageRef.parse("golang:1.24.4-bullseye")
    assert (ref.registry, ref.repository, ref.tag) == ("docker.io", "library/golang", "1.24.4-bullseye")


def test_registry_host_and_default_tag() -> None:
    ref = ImageRef.parse("registry.access.redhat.com/ubi9/ubi-minimal")
    assert (ref.registry, ref.repository, ref.tag) == ("registry.access.redhat.com", "ubi9/ubi-minimal", "latest")
    assert ImageRef.parse("127.0.0.1:5000/x/y:1").registry == "127.0.0.1:5000"


def test_mirror_with_prefix_keeps_the_repository_path() -> None:
    ref = ImageRef.parse("nvcr.io/nvidia/distroless/go:v3.2.1")
    assert str(mirrored(ref, {"nvcr.io": "127.0.0.1:5055/nvcr.io"})) == "127.0.0.1:5055/nvcr.io/nvidia/distroless/go:v3.2.1"
    assert mirrored(ref, {"docker.io": "elsewhere"}) == ref


def test_local_name_is_pinned_by_digest() -> None:
    name = local_name(ImageRef.parse("golang:1.22"), "sha256:" + "a" * 64)
    assert name == "kaibuild.local/docker.io/library/golang:sha256-" + "a" * 64
