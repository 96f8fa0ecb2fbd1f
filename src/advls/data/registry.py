"""The datasets :func:`advls.data.load` knows by name: their files, published checksums,
mirrors, classes and statistics, and the look-ups of a dataset and a split by name."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from advls.data.specs import DatasetSpec, FileSpec, mirror_urls

Registry = Mapping[str, DatasetSpec]

#: The official CIFAR-10 archive, and the directory it extracts to.
CIFAR10_TARBALL = "cifar-10-python.tar.gz"
CIFAR10_BATCH_DIR = "cifar-10-batches-py"
#: Members of that directory: the class names, and the batches of each split.
CIFAR10_META = "batches.meta"
CIFAR10_MEMBERS = {
    "train": tuple(f"data_batch_{i}" for i in range(1, 6)),
    "test": ("test_batch",),
}


def _sums(text: str) -> dict[str, str]:
    """Parse ``sha256sum`` output (``<digest>  <filename>`` per line)."""
    pairs = (line.split() for line in text.strip().splitlines())
    return {name: digest for digest, name in pairs}


def _files(sha256: Mapping[str, str], mirrors: Sequence[str]) -> tuple[FileSpec, ...]:
    return tuple(
        FileSpec(name, digest, mirror_urls(mirrors, name)) for name, digest in sha256.items()
    )


# Published sha256 sums, in sha256sum format. MNIST: the sums published with the official
# files, identical to tensorflow/datasets tensorflow_datasets/url_checksums/mnist.txt (every
# mirror serves the same bytes). The others: tensorflow/datasets
# tensorflow_datasets/url_checksums/{fashion_mnist,kmnist,svhn_cropped}.txt.
_MNIST_SHA256 = """
440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609  train-images-idx3-ubyte.gz
3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c  train-labels-idx1-ubyte.gz
8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6  t10k-images-idx3-ubyte.gz
f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6  t10k-labels-idx1-ubyte.gz
"""
_FASHION_MNIST_SHA256 = """
3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84  train-images-idx3-ubyte.gz
a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845  train-labels-idx1-ubyte.gz
346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073  t10k-images-idx3-ubyte.gz
67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5  t10k-labels-idx1-ubyte.gz
"""
_KMNIST_SHA256 = """
51467d22d8cc72929e2a028a0428f2086b092bb31cfb79c69cc0a90ce135fde4  train-images-idx3-ubyte.gz
e38f9ebcd0f3ebcdec7fc8eabdcdaef93bb0df8ea12bee65224341c8183d8e17  train-labels-idx1-ubyte.gz
edd7a857845ad6bb1d0ba43fe7e794d164fe2dce499a1694695a792adfac43c5  t10k-images-idx3-ubyte.gz
20bb9a0ef54c7db3efc55a92eef5582c109615df22683c380526788f98e42a1c  t10k-labels-idx1-ubyte.gz
"""
_SVHN_SHA256 = """
435e94d69a87fde4fd4d7f3dd208dfc32cb6ae8af2240d066de1df7508d083b8  train_32x32.mat
cdce80dfb2a2c4c6160906d0bd7c68ec5a99d7ca4831afa54f09182025b6a75b  test_32x32.mat
a133a4beb38a00fcdda90c9489e0c04f900b660ce8a316a5e854838379a71eb3  extra_32x32.mat
"""

_IDX_SPLITS = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


def _idx_dataset(
    name: str,
    classes: Sequence[str],
    stats: tuple[float, float],
    sha256: str,
    mirrors: Sequence[str],
) -> DatasetSpec:
    """A member of the MNIST family: idx files with the same names and splits."""
    mean, std = stats
    return DatasetSpec(
        name=name,
        format="idx",
        classes=tuple(classes),
        mean=(mean,),
        std=(std,),
        splits=_IDX_SPLITS,
        files=_files(_sums(sha256), mirrors),
    )


_MNIST = _idx_dataset(
    "mnist",
    [str(digit) for digit in range(10)],
    (0.1307, 0.3081),
    _MNIST_SHA256,
    ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"),
)
_FASHION_MNIST = _idx_dataset(
    "fashion-mnist",
    [
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    ],
    (0.2860, 0.3530),
    _FASHION_MNIST_SHA256,
    ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
)
# Classes are the romanised hiragana of KMNIST's classmap.csv.
_KMNIST = _idx_dataset(
    "kmnist",
    ["o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"],
    (0.1918, 0.3483),
    _KMNIST_SHA256,
    ("http://codh.rois.ac.jp/kmnist/dataset/kmnist/",),
)

# Tarball sha256: keras-team/keras keras/src/datasets/cifar10.py. Batch md5s (no sha256 is
# published for them): pytorch/vision torchvision/datasets/cifar.py. npz sums: advls' lossless
# npz copies of CIFAR-10 (train, first 1000 test images); they are never downloaded.
_CIFAR10 = DatasetSpec(
    name="cifar10",
    format="cifar10",
    classes=(
        "airplane",
        "automobile",
        "bird",
        "cat",
        "deer",
        "dog",
        "frog",
        "horse",
        "ship",
        "truck",
    ),
    mean=(0.4914, 0.4822, 0.4465),
    std=(0.2470, 0.2435, 0.2616),
    splits={"train": (CIFAR10_TARBALL,), "test": (CIFAR10_TARBALL,)},
    files=(
        FileSpec(
            CIFAR10_TARBALL,
            "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce",
            ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",),
        ),
        FileSpec("data_batch_1", None, md5="c99cafc152244af753f735de768cd75f"),
        FileSpec("data_batch_2", None, md5="d4bba439e000b95fd0a9bffe97cbabec"),
        FileSpec("data_batch_3", None, md5="54ebc095f3ab1f0389bbae665268c751"),
        FileSpec("data_batch_4", None, md5="634d18415352ddfa80567beed471001a"),
        FileSpec("data_batch_5", None, md5="482c414d41f54cd18b22e5b47cb7c3cb"),
        FileSpec("test_batch", None, md5="40351d587109b95175f43aff81a1287e"),
        FileSpec(CIFAR10_META, None, md5="5ff9c542aee3614f3951f8cda6e48888"),
        FileSpec(
            "cifar10_train_50000_uint8_hwc.npz",
            "614e29ee876052c4debd1cc2d171e076e0cb7afcee0b2a9facfb6596ece13608",
        ),
        FileSpec(
            "cifar10_test_first1000_uint8_hwc.npz",
            "82cd9307941022d681081d5e02d954b5e062f339da880c8fa5c30f90d092c64b",
        ),
    ),
)

_SVHN = DatasetSpec(
    name="svhn",
    format="svhn",
    classes=tuple(str(digit) for digit in range(10)),
    mean=(0.4377, 0.4438, 0.4728),
    std=(0.1980, 0.2010, 0.1970),
    splits={split: (f"{split}_32x32.mat",) for split in ("train", "test", "extra")},
    files=_files(
        _sums(_SVHN_SHA256),
        ("http://ufldl.stanford.edu/housenumbers/",),
    ),
)

#: Every dataset ``load`` knows by name. Pass a modified copy as ``registry=`` to override.
REGISTRY: Mapping[str, DatasetSpec] = {
    spec.name: spec for spec in (_MNIST, _FASHION_MNIST, _KMNIST, _CIFAR10, _SVHN)
}


def dataset_spec(name: str, registry: Registry | None) -> DatasetSpec:
    """The spec registered under ``name`` (case-insensitive) in ``registry`` or :data:`REGISTRY`."""
    specs = REGISTRY if registry is None else registry
    spec = specs.get(name.strip().lower())
    if spec is None:
        allowed = ", ".join(sorted(specs))
        raise ValueError(
            f"unknown dataset name={name!r}; allowed values: {allowed}, or a path to a .npz file"
        )
    return spec


def check_split(split: str, allowed: Sequence[str], dataset: str) -> None:
    """:class:`ValueError` unless ``split`` is one of ``allowed``."""
    if split not in allowed:
        raise ValueError(
            f"unknown split={split!r} for dataset {dataset!r}; allowed values: "
            + ", ".join(allowed)
        )
