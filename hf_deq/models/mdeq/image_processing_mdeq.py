"""Image processor of MDEQ: channel conversion (grayscale <-> RGB), resize, rescale, normalise.

Built on transformers' PIL/NumPy backend (``PilBackend``), so it needs no torchvision; ``AutoImageProcessor``
resolves it for ``model_type="mdeq"`` once ``hf_deq`` is imported.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from transformers.image_processing_backends import PilBackend
from transformers.image_utils import PILImageResampling
from transformers.processing_utils import ImagesKwargs


class MDEQImageProcessorKwargs(ImagesKwargs, total=False):
    """``ImagesKwargs`` plus ``num_channels``: the channel count images are converted to (1 or 3)."""

    num_channels: int | None


class MDEQImageProcessor(PilBackend):
    """Converts images to ``num_channels`` channels (PIL modes ``L``/``RGB``; arrays: grayscale is repeated,
    RGB is averaged with ITU-R 601 luma weights, an alpha channel is dropped), resizes them to ``size``
    (``config.image_size`` for ``from_model_config``), rescales to ``[0, 1]`` and normalises with
    ``image_mean`` / ``image_std`` (default 0.5 / 0.5 per channel). Returns ``pixel_values``
    ``(B, num_channels, H, W)``.
    """

    valid_kwargs = MDEQImageProcessorKwargs
    model_input_names = ["pixel_values"]
    resample = PILImageResampling.BILINEAR
    size = {"height": 32, "width": 32}
    num_channels = 3
    do_resize = True
    do_rescale = True
    do_normalize = True
    do_convert_rgb = False

    def __init__(self, **kwargs: Any) -> None:
        num_channels = kwargs.get("num_channels") or type(self).num_channels
        if num_channels not in (1, 3):
            raise ValueError(f"MDEQImageProcessor.num_channels must be 1 or 3, got {num_channels!r}")
        kwargs.setdefault("image_mean", [0.5] * num_channels)
        kwargs.setdefault("image_std", [0.5] * num_channels)
        super().__init__(**kwargs)

    @classmethod
    def from_model_config(cls, config: Any, **kwargs: Any) -> MDEQImageProcessor:
        """The processor matching an ``MDEQConfig``: its ``image_size`` and ``num_channels``."""
        kwargs.setdefault("size", {"height": config.image_size, "width": config.image_size})
        kwargs.setdefault("num_channels", config.num_channels)
        return cls(**kwargs)

    @classmethod
    def for_saved_model(cls, model_name_or_path: str, config: Any) -> MDEQImageProcessor:
        """The image processor saved with a model (through ``AutoImageProcessor``, so a processor class named in
        ``preprocessor_config.json`` is honoured); this class from that file where ``AutoImageProcessor`` is
        unavailable (transformers versions that need torchvision for it); ``from_model_config`` when the model was
        saved without one."""
        from transformers import AutoImageProcessor

        try:
            return AutoImageProcessor.from_pretrained(model_name_or_path)
        except ImportError:
            try:
                return cls.from_pretrained(model_name_or_path)
            except (OSError, ValueError):
                return cls.from_model_config(config)
        except (OSError, ValueError):
            return cls.from_model_config(config)

    def process_image(
        self,
        image: Any,
        do_convert_rgb: bool | None = None,
        input_data_format: Any = None,
        num_channels: int | None = None,
        **kwargs: Any,
    ) -> np.ndarray:
        num_channels = num_channels or self.num_channels
        if hasattr(image, "convert") and hasattr(image, "mode"):  # a PIL image: let PIL convert the mode
            image = image.convert("L" if num_channels == 1 else "RGB")
        array = super().process_image(image, do_convert_rgb=False, input_data_format=input_data_format)
        return _to_channels(array, num_channels)


def _to_channels(image: np.ndarray, num_channels: int) -> np.ndarray:
    """``(C, H, W)`` array to ``num_channels`` channels."""
    channels = image.shape[0]
    if channels == num_channels:
        return image
    if channels == 4:  # drop alpha
        image, channels = image[:3], 3
        if num_channels == 3:
            return image
    if channels == 1 and num_channels == 3:
        return np.repeat(image, 3, axis=0)
    if channels == 3 and num_channels == 1:
        weights = np.asarray([0.299, 0.587, 0.114], dtype=np.float64).reshape(3, 1, 1)
        luma = (image.astype(np.float64) * weights).sum(axis=0, keepdims=True)
        return (
            luma.astype(image.dtype)
            if np.issubdtype(image.dtype, np.floating)
            else luma.round().astype(image.dtype)
        )
    raise ValueError(f"cannot convert an image with {channels} channels to {num_channels} channels")


__all__ = ["MDEQImageProcessor"]
