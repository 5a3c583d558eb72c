"""Tiny SAM models for tests: segment-anything's own modeling classes, reduced sizes, random weights.

The encoder input stays 1024×1024 with 16-pixel patches (so the runtime sees
the real 64×64 embedding grid and 256×256 low-resolution masks); widths,
depths and the decoder's MLP are shrunk so a forward pass takes milliseconds.
"""

from __future__ import annotations

from pathlib import Path

from eac.export.sam_loader import SamArchitecture, build_sam_model

#: A SAM small enough for unit tests (~0.2 M parameters).
TINY_SAM = SamArchitecture(
    encoder_embed_dim=32,
    encoder_depth=2,
    encoder_num_heads=2,
    encoder_global_attn_indexes=(1,),
    prompt_embed_dim=32,
    decoder_mlp_dim=64,
    decoder_num_heads=2,
    iou_head_hidden_dim=32,
    mask_in_chans=8,
)
#: Scale applied to the mask head's hypernetwork output. Random weights give
#: logits of about ±0.1, so every stability score would be 0; this gain brings
#: them to a few units (the sign, hence the masks, is unchanged).
MASK_LOGIT_GAIN = 64.0


def regionise_decoder_(sam) -> None:
    """Make a random-weight mask decoder give region-like masks (in place; see :func:`build_tiny_sam`)."""
    import torch

    with torch.no_grad():
        for layer in sam.mask_decoder.output_upscaling:
            if isinstance(layer, torch.nn.ConvTranspose2d):
                layer.weight.copy_(layer.weight.mean(dim=(2, 3), keepdim=True).expand_as(layer.weight))
        for mlp in sam.mask_decoder.output_hypernetworks_mlps:
            mlp.layers[-1].weight.mul_(MASK_LOGIT_GAIN)
            mlp.layers[-1].bias.mul_(MASK_LOGIT_GAIN)


def build_tiny_sam(seed: int = 0, arch: SamArchitecture = TINY_SAM):
    """A deterministic random-weight SAM of shape ``arch`` (eval mode, fp32)."""
    import torch

    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        sam = build_sam_model(arch)
        # Random transposed-convolution kernels make every 4×4 block of the low-res
        # masks a random pattern (salt-and-pepper masks); with the kernel shared by
        # the 2×2 positions the upscaling is a nearest-neighbour one and the masks
        # follow the image embedding: regions, as a trained SAM gives.
        regionise_decoder_(sam)
    finally:
        torch.random.set_rng_state(state)
    return sam.eval()


def save_checkpoint(sam, path: str | Path) -> Path:
    """Save ``sam``'s state dict as an official-style ``.pth`` checkpoint."""
    import torch

    path = Path(path)
    torch.save(sam.state_dict(), path)
    return path
