"""The PyTorch modules that become SAM's ONNX graphs, the PyTorch reference, synthetic inputs.

Imported by :mod:`eac.export.sam` only once torch is known to be installed, so
that ``eac export sam`` without the export extra fails with one line instead of
a ``ModuleNotFoundError``. See :mod:`eac.export.sam` for the graphs' contracts.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ._torch_utils import half_with_fp32_norms
from .sam_loader import SAM_ARCHITECTURES

#: Synthetic images: an 8×8 grid of random colours upsampled, plus this much pixel noise.
_COARSE_GRID = 8
_PIXEL_NOISE = 8.0
_PIXEL_MAX = 255.0


# --- modules that become the graphs --------------------------------------------------------

def _as_fp32(x):
    """``x.float()`` without the identity ``Cast`` the tracer emits for a tensor already in fp32.

    ONNX Runtime cannot drop a Cast that produces a graph output: on the decoder's
    B×3×256×256 masks that is a full copy per call.
    """
    return x if x.dtype == torch.float32 else x.float()


#: SAM's channel-first LayerNorm, kept in fp32 by fp16 exports (besides torch.nn.LayerNorm).
SAM_NORM_NAMES = ("LayerNorm2d",)


#: Attention heads computed together in the ViT encoder's global-attention blocks. Their N×N score
#: matrices (N = 64·64 tokens: 64 MB per head in fp32) exist for one chunk at a time instead of for all
#: heads at once (12 heads of ViT-B: about 0.8 GB per copy, several copies alive at the peak).
GLOBAL_ATTENTION_HEADS_PER_CHUNK = 2


def chunked_global_attention(attn, x, heads_per_chunk: int = GLOBAL_ATTENTION_HEADS_PER_CHUNK):
    """segment-anything's ``image_encoder.Attention.forward`` on B×H×W×C, a few heads at a time.

    The same arithmetic (scaled dot product, decomposed relative positions, softmax) per
    head; heads are independent, so computing them in chunks changes only the peak memory.
    """
    import sys

    rel_pos = sys.modules[type(attn).__module__].add_decomposed_rel_pos
    batch, height, width, _ = x.shape
    heads = attn.num_heads
    qkv = attn.qkv(x).reshape(batch, height * width, 3, heads, -1).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.reshape(3, batch * heads, height * width, -1).unbind(0)
    outs = []
    for start in range(0, batch * heads, heads_per_chunk):
        stop = start + heads_per_chunk
        qc = q[start:stop]
        scores = (qc * attn.scale) @ k[start:stop].transpose(-2, -1)
        if attn.use_rel_pos:
            scores = rel_pos(scores, qc, attn.rel_pos_h, attn.rel_pos_w, (height, width), (height, width))
        outs.append(scores.softmax(dim=-1) @ v[start:stop])
    out = torch.cat(outs, dim=0).view(batch, heads, height, width, -1).permute(0, 2, 3, 1, 4)
    return attn.proj(out.reshape(batch, height, width, -1))


class SamEncoderGraph(torch.nn.Module):
    """``image`` (normalised, padded, fp32) → ``image_embeddings`` (fp32), computing in ``dtype``.

    For segment-anything's ViT encoders the blocks run here, with the global-attention
    blocks' heads in chunks (:func:`chunked_global_attention`); the modules are not
    changed. Other encoders (EfficientViT-SAM) run as they are.
    """

    def __init__(self, encoder, dtype):
        super().__init__()
        self.encoder = encoder
        self.dtype = dtype

    def _vit(self, x):
        enc = self.encoder
        x = enc.patch_embed(x)
        if enc.pos_embed is not None:
            x = x + enc.pos_embed
        for block in enc.blocks:
            if block.window_size > 0:
                x = block(x)
                continue
            x = x + chunked_global_attention(block.attn, block.norm1(x))
            x = x + block.mlp(block.norm2(x))
        return enc.neck(x.permute(0, 3, 1, 2))

    def forward(self, image):
        image = image.to(self.dtype)
        if hasattr(self.encoder, "blocks") and hasattr(self.encoder, "patch_embed"):
            return _as_fp32(self._vit(image))
        return _as_fp32(self.encoder(image))


def encoder_module(sam, fp16: bool) -> SamEncoderGraph:
    """The encoder graph's module (fp16 with fp32 norms when asked), eval mode."""
    encoder = half_with_fp32_norms(sam.image_encoder, SAM_NORM_NAMES) if fp16 else sam.image_encoder
    return SamEncoderGraph(encoder, torch.float16 if fp16 else torch.float32).eval()


class BatchedPromptDecoder(torch.nn.Module):
    """Embeddings 1×C×h×w + B point-prompt sets → B×3 mask logits and B×3 IoUs.

    The prompt encoding (random-Fourier positional encoding plus label
    embeddings, with the padding point SAM adds when there is no box) runs in
    fp32; the transformer and mask head run in ``dtype``.
    """

    def __init__(self, sam, decoder, dtype):
        super().__init__()
        pe = sam.prompt_encoder
        self.dtype = dtype
        self.transformer = decoder.transformer
        self._init_upscaling(decoder.output_upscaling, dtype)
        self.hypernetworks = decoder.output_hypernetworks_mlps
        self.iou_head = decoder.iou_prediction_head
        self.num_mask_tokens = decoder.num_mask_tokens
        with torch.no_grad():
            tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)
            self.register_buffer("output_tokens", tokens.float().clone())
            self.register_buffer("dense_pe", pe.get_dense_pe().float().clone())
            self.register_buffer("no_mask", pe.no_mask_embed.weight.float().reshape(1, -1, 1, 1).clone())
            self.register_buffer("gaussian", pe.pe_layer.positional_encoding_gaussian_matrix.float().clone())
            self.register_buffer("not_a_point", pe.not_a_point_embed.weight.float().clone())
            self.register_buffer("negative", pe.point_embeddings[0].weight.float().clone())
            self.register_buffer("positive", pe.point_embeddings[1].weight.float().clone())
            in_h, in_w = pe.input_image_size
            self.register_buffer("input_wh", torch.tensor([float(in_w), float(in_h)]))

    def embed_points(self, coords, labels):
        pad_coords = torch.zeros_like(coords[:, :1, :])
        pad_labels = -torch.ones_like(labels[:, :1])
        coords = torch.cat([coords + 0.5, pad_coords], dim=1)  # SAM shifts to pixel centres, not the pad
        labels = torch.cat([labels, pad_labels], dim=1).unsqueeze(-1)
        unit = 2.0 * (coords / self.input_wh) - 1.0
        angles = 2.0 * math.pi * (unit @ self.gaussian)
        encoding = torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)
        is_pad = (labels == -1.0).to(encoding.dtype)
        is_neg = (labels == 0.0).to(encoding.dtype)
        is_pos = (labels == 1.0).to(encoding.dtype)
        return (encoding * (1.0 - is_pad) + is_pad * self.not_a_point
                + is_neg * self.negative + is_pos * self.positive)

    def forward(self, image_embeddings, point_coords, point_labels):
        sparse = self.embed_points(point_coords, point_labels)
        batch = sparse.shape[0]
        tokens = torch.cat([self.output_tokens.unsqueeze(0).expand(batch, -1, -1), sparse], dim=1)
        src = (image_embeddings + self.no_mask).to(self.dtype)  # batch 1: broadcast against B prompts
        channels, height, width = src.shape[1], src.shape[2], src.shape[3]
        hs, keys = self.transformer(src, self.dense_pe.to(self.dtype), tokens.to(self.dtype))
        # multimask output: mask tokens 1..3 (token 0 is the single-mask output)
        hyper = torch.stack(
            [self.hypernetworks[i](hs[:, 1 + i, :]) for i in range(1, self.num_mask_tokens)], dim=1
        )
        masks = self.upscale_and_project(keys.reshape(-1, height, width, channels), hyper)
        iou = self.iou_head(hs[:, 0, :])[:, 1:]
        return _as_fp32(masks), _as_fp32(iou)

    def _init_upscaling(self, upscaling, dtype):
        """Keep SAM's output upscaling (ConvT 2×2/2 → LayerNorm2d → GELU → ConvT 2×2/2 → GELU) as matrices.

        A transposed convolution with kernel = stride = 2 maps each input pixel
        to a 2×2 output block independently: one matrix product per pixel,
        channels-last, followed by a depth-to-space reshuffle. It avoids
        ConvTranspose kernels (slow in ONNX Runtime's CPU provider) and makes
        LayerNorm2d a plain LayerNormalization over the last axis.
        """
        conv1, norm, act1, conv2, act2 = list(upscaling)
        norm = getattr(norm, "inner", norm)
        with torch.no_grad():
            for index, conv in ((1, conv1), (2, conv2)):
                c_in, c_out = conv.weight.shape[0], conv.weight.shape[1]
                # (C_in, C_out, 2, 2) → (C_in, 2·2·C_out) ordered (dy, dx, c_out)
                weight = conv.weight.detach().permute(0, 2, 3, 1).reshape(c_in, 4 * c_out)
                self.register_buffer(f"up{index}_weight", weight.to(dtype).clone())
                self.register_buffer(f"up{index}_bias", conv.bias.detach().repeat(4).to(dtype).clone())
            self.register_buffer("up_norm_weight", norm.weight.detach().float().clone())
            self.register_buffer("up_norm_bias", norm.bias.detach().float().clone())
        self.up_norm_eps = float(norm.eps)
        self.up_act1, self.up_act2 = act1, act2
        self.up_channels = (int(conv1.weight.shape[1]), int(conv2.weight.shape[1]))

    #: Write the upscaling's products as MatMul + Add (ONNX Runtime fuses them into a Gemm when it loads the
    #: graph; the dynamic int8 quantiser only quantises MatMul nodes) instead of a Gemm node.
    matmul_add = False

    def _linear(self, x, weight, bias):
        """2-D ``x @ weight + bias`` (a Gemm node, or MatMul + Add when :attr:`matmul_add`)."""
        return x @ weight + bias if self.matmul_add else torch.addmm(bias, x, weight)

    def upscale_and_project(self, grid, hyper):
        """B×h×w×C keys and B×K×C' hypernetwork outputs → B×K×4h×4w mask logits.

        Everything between the two transposed convolutions is per output
        pixel (LayerNorm over channels, GELU), so it runs on the blocked
        layout B×h×w×(2·2)×c; the pixels are put in raster order once, on
        the K-channel result.
        """
        c1, c2 = self.up_channels
        h, w = grid.shape[1], grid.shape[2]
        # 2-D products: ONNX Runtime fuses the bias into a Gemm (no separate pass over the
        # largest tensors of the graph, and no slow fused bias-GELU kernel).
        x = self._linear(grid.reshape(-1, grid.shape[3]), self.up1_weight, self.up1_bias)
        x = torch.nn.functional.layer_norm(_as_fp32(x.reshape(-1, h, w, 4, c1)), (c1,), self.up_norm_weight,
                                           self.up_norm_bias, self.up_norm_eps).to(self.dtype)
        x = self.up_act1(x)
        x = self._linear(x.reshape(-1, c1), self.up2_weight, self.up2_bias)
        x = self.up_act2(x)  # B·h·w·4 × (2·2·c2): blocks of blocks
        k = hyper.shape[1]
        masks = x.reshape(-1, h * w * 16, c2) @ hyper.transpose(1, 2)  # B×(h·w·16)×K
        # (i, j, dy, dx, dy', dx', k) → row 4i + 2dy + dy', column 4j + 2dx + dx'
        masks = masks.reshape(-1, h, w, 2, 2, 2, 2, k).permute(0, 7, 1, 3, 5, 2, 4, 6)
        return masks.reshape(-1, k, 4 * h, 4 * w)


class FactoredPromptDecoder(BatchedPromptDecoder):
    """:class:`BatchedPromptDecoder` with the per-prompt image-side products re-associated.

    Same graph contract and the same function (up to float rounding); fewer
    multiply-adds per prompt. Per prompt, the two-way transformer updates the
    N = h·w image tokens only through attention over the T ≈ 7 prompt tokens,
    and every projection of an image-side tensor is linear, so with H heads of
    width d (internal width D = H·d, embedding width C):

    * token→image attention: the scores ``(q Wk_h) (X Wk_h + bk)ᵀ`` are computed
      as ``(q_h Wk_h) Xᵀ`` — an (H·T)×C by C×N product instead of projecting
      the N image tokens (N×C×D) — the key bias adds a per-row constant that
      softmax ignores; the values as ``(A_h X) Wv_hᵀ + bv`` (softmax rows sum to 1);
    * image→token attention: the scores ``(X Wq_h + bq) k_hᵀ`` as
      ``X (Wq_hᵀ k_hᵀ) + bq k_hᵀ`` and the output ``Σ_h A_h v_h Wo_hᵀ`` as one
      N×(H·T) by (H·T)×C product instead of N×D then N×D×C.

    While the image tokens are still the shared batch-1 embedding (the first
    layer), the original order is cheaper and computed once per call. For
    SAM's decoder (C = 256, D = 128, H = 8, one point: T = 7) the transformer's
    per-prompt cost falls from about 0.94 to 0.41 GMAC.
    """

    def __init__(self, sam, decoder, dtype):
        super().__init__(sam, decoder, dtype)
        self.layers = list(self.transformer.layers)
        self.final_attn = self.transformer.final_attn_token_to_image
        self.final_norm = self.transformer.norm_final_attn
        first = self.layers[0]
        self.channels = int(first.cross_attn_token_to_image.embedding_dim)
        self.internal = int(first.cross_attn_token_to_image.internal_dim)
        self.internal_i2t = int(first.cross_attn_image_to_token.internal_dim)

    @property
    def context_width(self) -> int:
        """Channels of :meth:`image_context`: the tokens, then layer 1's keys, values and image queries."""
        return self.channels + 2 * self.internal + self.internal_i2t

    @staticmethod
    def _heads(x, heads):
        """B×T×D → B×H×T×d."""
        return x.reshape(x.shape[0], x.shape[1], heads, -1).transpose(1, 2)

    def image_context(self, image_embeddings):
        """Everything the decoder computes from the image alone: 1×C×h×w → 1×N×(C + 2D + D').

        The image tokens with the no-mask embedding added, and the first layer's
        token→image keys (of tokens + dense positional encoding) and values and
        its image→token queries: the prompt-independent part of the decoder, once
        per image.
        """
        keys = (image_embeddings + self.no_mask).to(self.dtype).flatten(2).transpose(1, 2)  # 1×N×C
        keys_pe = keys + self.dense_pe.to(self.dtype).flatten(2).transpose(1, 2)
        first = self.layers[0]
        t2i, i2t = first.cross_attn_token_to_image, first.cross_attn_image_to_token
        return torch.cat([keys, t2i.k_proj(keys_pe), t2i.v_proj(keys), i2t.q_proj(keys_pe)], dim=2)

    def _token_to_image(self, attn, queries, keys, keys_pe, shared=None):
        """Prompt tokens attend to the image tokens; returns B×T×C.

        ``shared``: the projected keys and values (1×N×D each) when the image
        tokens are still the batch-1 context; otherwise ``keys`` is B×N×C.
        """
        heads = attn.num_heads
        q = self._heads(attn.q_proj(queries), heads)  # B×H×T×d
        batch, _, tokens, width = q.shape
        q = q * (1.0 / math.sqrt(width))
        if shared is not None:
            k, v = (self._heads(t, heads) for t in shared)  # 1×H×N×d
            out = torch.softmax(q @ k.transpose(2, 3), dim=-1) @ v  # B×H×T×d
        else:
            channels = keys.shape[2]
            wk = attn.k_proj.weight.reshape(heads, width, channels)  # H×d×C
            wv = attn.v_proj.weight.reshape(heads, width, channels)
            r = (q @ wk).reshape(batch, heads * tokens, channels)  # B×(H·T)×C
            weights = torch.softmax(r @ keys_pe.transpose(1, 2), dim=-1)  # B×(H·T)×N
            mixed = (weights @ keys).reshape(batch, heads, tokens, channels)  # B×H×T×C
            out = mixed @ wv.transpose(1, 2) + attn.v_proj.bias.reshape(heads, 1, width)
        out = out.transpose(1, 2).reshape(batch, tokens, heads * width)
        return attn.out_proj(out)

    def _image_to_token(self, attn, keys, keys_pe, token_keys, queries, shared=None):
        """Image tokens attend to the prompt tokens; returns the B×N×C update of ``keys``.

        ``shared``: the projected image queries (1×N×D') while the image tokens are
        the batch-1 context; otherwise ``keys_pe`` is B×N×C.
        """
        heads = attn.num_heads
        k = self._heads(attn.k_proj(token_keys), heads)  # B×H×T×d
        v = self._heads(attn.v_proj(queries), heads)
        batch, _, tokens, width = k.shape
        k = k * (1.0 / math.sqrt(width))
        channels, n = keys.shape[2], keys.shape[1]
        if shared is not None:
            scores = self._heads(shared, heads) @ k.transpose(2, 3)  # B×H×N×T
        else:
            wq = attn.q_proj.weight.reshape(heads, width, channels)  # H×d×C
            mq = (wq.transpose(1, 2) @ k.transpose(2, 3))  # B×H×C×T
            bias = attn.q_proj.bias.reshape(1, heads, 1, width) @ k.transpose(2, 3)  # B×H×1×T
            mq = mq.permute(0, 2, 1, 3).reshape(batch, channels, heads * tokens)
            scores = (keys_pe @ mq).reshape(batch, n, heads, tokens) + bias.permute(0, 2, 1, 3)
            scores = scores.permute(0, 2, 1, 3)  # B×H×N×T
        weights = torch.softmax(scores, dim=-1).permute(0, 2, 1, 3).reshape(batch, n, heads * tokens)
        wo = attn.out_proj.weight.reshape(channels, heads, width).permute(1, 2, 0)  # H×d×C
        mo = v @ wo  # B×H×T×C
        # Each head's weights sum to 1 over its T tokens: the output bias rides on head 0's rows
        # instead of a separate B×N×C addition.
        mo = torch.cat([mo[:, :1] + attn.out_proj.bias, mo[:, 1:]], dim=1).reshape(batch, heads * tokens, channels)
        return weights @ mo

    def _block(self, layer, queries, keys, pe, query_pe, shared=None):
        """One TwoWayAttentionBlock; ``keys`` B×N×C, or 1×N×C with ``shared`` = (k, v, q) of the context."""
        if layer.skip_first_layer_pe:
            queries = layer.self_attn(q=queries, k=queries, v=queries)
        else:
            q = queries + query_pe
            queries = queries + layer.self_attn(q=q, k=q, v=queries)
        queries = layer.norm1(queries)
        keys_pe = None if shared is not None else keys + pe
        queries = layer.norm2(queries + self._token_to_image(
            layer.cross_attn_token_to_image, queries + query_pe, keys, keys_pe,
            None if shared is None else shared[:2]))
        queries = layer.norm3(queries + layer.mlp(queries))
        update = self._image_to_token(layer.cross_attn_image_to_token, keys, keys_pe, queries + query_pe, queries,
                                      None if shared is None else shared[2])
        keys = layer.norm4(keys + update)
        return queries, keys

    def decode(self, context, point_coords, point_labels):
        """B prompt sets against one image's :meth:`image_context` → (B×3×4h×4w logits, B×3 IoUs)."""
        sparse = self.embed_points(point_coords, point_labels)
        batch = sparse.shape[0]
        tokens = torch.cat([self.output_tokens.unsqueeze(0).expand(batch, -1, -1), sparse], dim=1).to(self.dtype)
        height, width = self.dense_pe.shape[2], self.dense_pe.shape[3]
        c, d, d2 = self.channels, self.internal, self.internal_i2t
        keys = context[:, :, :c]
        shared = (context[:, :, c:c + d], context[:, :, c + d:c + 2 * d], context[:, :, c + 2 * d:c + 2 * d + d2])
        pe = self.dense_pe.to(self.dtype).flatten(2).transpose(1, 2)
        queries = tokens
        for index, layer in enumerate(self.layers):
            queries, keys = self._block(layer, queries, keys, pe, tokens, shared if index == 0 else None)
        queries = self.final_norm(queries + self._token_to_image(self.final_attn, queries + tokens, keys, keys + pe))
        hyper = torch.stack(
            [self.hypernetworks[i](queries[:, 1 + i, :]) for i in range(1, self.num_mask_tokens)], dim=1
        )
        masks = self.upscale_and_project(keys.reshape(-1, height, width, c), hyper)
        iou = self.iou_head(queries[:, 0, :])[:, 1:]
        return _as_fp32(masks), _as_fp32(iou)

    def forward(self, image_embeddings, point_coords, point_labels):
        return self.decode(self.image_context(image_embeddings), point_coords, point_labels)


class DecoderContextGraph(torch.nn.Module):
    """``image_embeddings`` 1×C×h×w → ``image_context`` 1×N×W: :meth:`FactoredPromptDecoder.image_context`."""

    def __init__(self, decoder: FactoredPromptDecoder):
        super().__init__()
        self.decoder = decoder

    def forward(self, image_embeddings):
        return _as_fp32(self.decoder.image_context(image_embeddings))


class ContextPromptDecoder(torch.nn.Module):
    """``image_context`` + B point-prompt sets → masks and IoUs: :meth:`FactoredPromptDecoder.decode`."""

    def __init__(self, decoder: FactoredPromptDecoder):
        super().__init__()
        self.decoder = decoder

    def forward(self, image_context, point_coords, point_labels):
        return self.decoder.decode(image_context.to(self.decoder.dtype), point_coords, point_labels)


#: Decoder graph layouts :func:`decoder_module` builds (recorded in the manifest as ``decoder.graph``).
DECODER_GRAPHS = {"batched": BatchedPromptDecoder, "factored": FactoredPromptDecoder}
DEFAULT_DECODER_GRAPH = "factored"


def decoder_module(sam, fp16: bool, graph: str = DEFAULT_DECODER_GRAPH) -> BatchedPromptDecoder:
    """The decoder graph's module (fp16 with fp32 norms when asked), eval mode.

    Parameters
    ----------
    sam : segment_anything Sam (or a model with the same prompt encoder and mask decoder)
    fp16 : bool
        Transformer and mask head in fp16 (norms and prompt encoding in fp32).
    graph : {"factored", "batched"}
        :class:`FactoredPromptDecoder` (default, fewer multiply-adds per prompt) or
        :class:`BatchedPromptDecoder` (SAM's operation order).
    """
    if graph not in DECODER_GRAPHS:
        raise ValueError(f"unknown decoder graph {graph!r}; choose from {', '.join(DECODER_GRAPHS)}")
    if fp16:
        decoder = half_with_fp32_norms(sam.mask_decoder, SAM_NORM_NAMES)
        dtype = torch.float16
    else:
        decoder, dtype = sam.mask_decoder, torch.float32
    return DECODER_GRAPHS[graph](sam, decoder, dtype).eval()


def reference_decoder(sam, embeddings, coords, labels):
    """PyTorch reference: ``SamPredictor.predict_torch(..., multimask_output=True)`` without boxes/masks.

    Parameters
    ----------
    sam : segment_anything Sam
    embeddings : Tensor, 1×C×h×w
    coords : Tensor, B×P×2 (x, y in the encoder input frame)
    labels : Tensor, B×P

    Returns
    -------
    (Tensor B×3×4h×4w, Tensor B×3)
        Low-resolution mask logits and predicted IoUs.
    """
    with torch.no_grad():
        sparse, dense = sam.prompt_encoder(points=(coords, labels.int()), boxes=None, masks=None)
        return sam.mask_decoder(
            image_embeddings=embeddings,
            image_pe=sam.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=True,
        )


# --- synthetic inputs -------------------------------------------------------------------

def synthetic_image(size: int, height: int, width: int, seed: int) -> np.ndarray:
    """A smooth, photo-like 0-255 RGB image of height×width, normalised and padded to size×size.

    Returns
    -------
    ndarray of float32, 1×3×size×size
        SAM's encoder input (pixel mean/std of the official models applied).
    """
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, _COARSE_GRID, _COARSE_GRID, generator=gen) * _PIXEL_MAX
    image = torch.nn.functional.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=False)
    noise = torch.randn(1, 3, height, width, generator=gen) * _PIXEL_NOISE
    image = (image + noise).clamp(0.0, _PIXEL_MAX)
    arch = SAM_ARCHITECTURES["vit_b"]
    mean = torch.tensor(arch.pixel_mean).view(1, 3, 1, 1)
    std = torch.tensor(arch.pixel_std).view(1, 3, 1, 1)
    normalised = (image - mean) / std
    padded = torch.zeros(1, 3, size, size)
    padded[:, :, :height, :width] = normalised
    return padded.numpy().astype(np.float32)


def synthetic_prompts(batch: int, points: int, size: int, seed: int,
                      mixed_labels: bool) -> tuple[np.ndarray, np.ndarray]:
    """Random point prompts: coords B×P×2 in [0, size), labels B×P (1, or 1/0/-1 when mixed)."""
    rng = np.random.default_rng(seed)
    coords = rng.uniform(0.0, size, size=(batch, points, 2)).astype(np.float32)
    if mixed_labels:
        labels = rng.choice(np.array([1.0, 0.0, -1.0], np.float32), size=(batch, points))
        labels[:, 0] = 1.0
    else:
        labels = np.ones((batch, points), np.float32)
    return coords, labels


__all__ = [
    "DECODER_GRAPHS", "DEFAULT_DECODER_GRAPH", "BatchedPromptDecoder", "FactoredPromptDecoder",
    "SamEncoderGraph", "decoder_module", "encoder_module",
    "reference_decoder", "synthetic_image", "synthetic_prompts",
]
