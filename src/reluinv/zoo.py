"""The paper's architectures (Appendix A4, Tables 1-4) and the 2-d toy network of Figure 1.

Every builder returns a ``torch.nn.Sequential`` whose ReLUs are separate modules, as the legends
of Figures 5, 8, 10 and 11 count them (an activation is its own layer): for the CNNs the 1-based
legend number is the module index + 1 (``experiments.spectra_data.paper_numbering``).

Choices the paper leaves open, made here:

* Convolutions use zero padding 1 ("same" padding, as the Keras ``cifar10_cnn`` example the paper
  follows).  With a 32 x 32 input, layer 4 of WideCIFAR then has 32 x 16 x 16 = 8192 units, of
  which the paper's Figure 9 sample keeps M = 5120 active, and ThinCIFAR's last convolution
  32 x 8 x 8 = 2048 units, fewer than the 3072 inputs.
* The softmax of the last dense layer is left to the loss; the networks output logits.
* ``in_channels`` and ``image_size`` change the input shape.  The figures always use three
  channels (CIFAR-10 or a stand-in of its shape, :mod:`reluinv.experiments.cifar_shaped`); quick
  mode may halve the side to 16, which shrinks the input and every layer by the same factor 4.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

__all__ = ["mlp_table1", "mlp_table2", "thin_cifar", "toy_circles", "wide_cifar", "ARCHITECTURES"]


def mlp_table1(in_features: int = 784, width: int = 100, depth: int = 10, classes: int = 10) -> nn.Sequential:
    """Table 1: ten dense ReLU layers of 100 units, then a dense layer of 10 (softmax in the loss)."""
    layers: list[nn.Module] = [nn.Flatten()]
    previous = in_features
    for _ in range(depth):
        layers += [nn.Linear(previous, width), nn.ReLU()]
        previous = width
    layers.append(nn.Linear(previous, classes))
    return nn.Sequential(*layers)


def mlp_table2(in_features: int = 784, classes: int = 10) -> nn.Sequential:
    """Table 2 / Section 2.2: dense ReLU layers of 3500 and 784 units, then 10 outputs."""
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(in_features, 3500),
        nn.ReLU(),
        nn.Linear(3500, 784),
        nn.ReLU(),
        nn.Linear(784, classes),
    )


def _cifar_cnn(maps: tuple[int, ...], in_channels: int, image_size: int, classes: int) -> nn.Sequential:
    strides = (1, 2, 1, 1, 1, 2)
    layers: list[nn.Module] = []
    channels, size = in_channels, image_size
    for out_channels, stride in zip(maps, strides, strict=True):
        layers += [nn.Conv2d(channels, out_channels, 3, stride=stride, padding=1), nn.ReLU()]
        channels, size = out_channels, (size + 2 - 3) // stride + 1
    layers += [nn.Flatten(), nn.Linear(channels * size * size, 512), nn.ReLU(), nn.Linear(512, classes)]
    return nn.Sequential(*layers)


def wide_cifar(in_channels: int = 3, image_size: int = 32, classes: int = 10) -> nn.Sequential:
    """Table 3 (WideCIFAR): 3x3 convolutions with 32, 64, 64, 32, 32, 64 maps, strides 1,2,1,1,1,2,
    then dense 512 and 10."""
    return _cifar_cnn((32, 64, 64, 32, 32, 64), in_channels, image_size, classes)


def thin_cifar(in_channels: int = 3, image_size: int = 32, classes: int = 10) -> nn.Sequential:
    """Table 4 (ThinCIFAR): 3x3 convolutions with 32, 32, 16, 16, 16, 32 maps, strides 1,2,1,1,1,2,
    then dense 512 and 10."""
    return _cifar_cnn((32, 32, 16, 16, 16, 32), in_channels, image_size, classes)


def toy_circles(hidden: int = 3) -> nn.Sequential:
    """Figure 1: one hidden layer of 3 ReLUs on 2-d input, two classes."""
    return nn.Sequential(nn.Linear(2, hidden), nn.ReLU(), nn.Linear(hidden, 2))


ARCHITECTURES: dict[str, Callable[..., nn.Sequential]] = {
    "mlp_table1": mlp_table1,
    "mlp_table2": mlp_table2,
    "wide_cifar": wide_cifar,
    "thin_cifar": thin_cifar,
    "toy_circles": toy_circles,
}
