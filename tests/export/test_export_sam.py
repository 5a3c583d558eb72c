"""`eac export sam`: tiny SAM end to end through the CLI, parity, fp16, errors, checkpoints, loader."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")

from eac.engine.cli import main
from eac.engine.manifest import file_sha256, read_manifest
from eac.export import common as export_common
from eac.export import sam as sam_export
from eac.export import sam_loader
from eac.export.errors import CheckpointError, ExportError, ValidationError
from eac.export.spec import SAM_DECODER, SAM_ENCODER, SAM_PROMPT_DECODER

from tests.sam_fixtures import TINY_SAM, build_tiny_sam, save_checkpoint

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny_sam():
    return build_tiny_sam(seed=0)


@pytest.fixture(scope="module")
def tiny_checkpoint(tiny_sam, tmp_path_factory):
    return save_checkpoint(tiny_sam, tmp_path_factory.mktemp("ckpt") / "tiny_sam.pth")


@pytest.fixture
def tiny_as_vit_b(monkeypatch):
    """Let `--model-type vit_b` build the tiny architecture (the CLI only offers real types)."""
    monkeypatch.setitem(sam_loader.SAM_ARCHITECTURES, "vit_b", TINY_SAM)


@pytest.fixture(scope="module")
def exported(tiny_checkpoint, tmp_path_factory):
    """The tiny SAM exported once through the CLI (fp32)."""
    out = tmp_path_factory.mktemp("export") / "sam"
    mp = pytest.MonkeyPatch()
    mp.setitem(sam_loader.SAM_ARCHITECTURES, "vit_b", TINY_SAM)
    try:
        rc = main(["export", "sam", "--model-type", "vit_b", "--checkpoint", str(tiny_checkpoint), "--out", str(out)])
    finally:
        mp.undo()
    assert rc == 0
    return out


def ort_session(path: Path):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_cli_export_writes_folder_and_manifest(exported):
    manifest = read_manifest(exported, "sam")
    assert sorted(p.name for p in exported.iterdir()) == ["decoder.onnx", "decoder_context.onnx", "encoder.onnx",
                                                          "manifest.json"]
    assert manifest["model_type"] == "vit_b" and manifest["precision"] == "fp32"
    assert manifest["opset"] == 17
    for role in ("encoder", "decoder", "decoder_context"):
        entry = manifest["files"][role]
        assert entry["sha256"] == file_sha256(exported / entry["path"])
    enc, dec = manifest["encoder"], manifest["decoder"]
    assert enc["input"] == "image" and enc["output"] == "image_embeddings" and enc["input_size"] == 1024
    assert enc["normalize_in_graph"] is False
    np.testing.assert_allclose(enc["pixel_mean"], [123.675, 116.28, 103.53], rtol=1e-6)
    np.testing.assert_allclose(enc["pixel_std"], [58.395, 57.12, 57.375], rtol=1e-6)
    assert dec["inputs"] == list(SAM_PROMPT_DECODER.inputs) and dec["outputs"] == list(SAM_DECODER.outputs)
    assert dec["low_res_size"] == 256 and dec["num_masks"] == 3 and dec["mask_threshold"] == 0.0
    assert dec["precompute"]["input_shape"] == [1, TINY_SAM.prompt_embed_dim, 64, 64]
    val = manifest["validation"]
    for name, diff in val["encoder"]["max_abs_diff"].items():
        assert 0 <= diff <= SAM_ENCODER.tolerance[name]
    for name, diff in val["decoder"]["max_abs_diff"].items():
        assert 0 <= diff <= SAM_DECODER.tolerance[name]
    assert {(c["batch"], c["points"]) for c in val["decoder"]["cases"]} == set(sam_export.VALIDATION_PROMPTS)
    assert manifest["eac_version"] and manifest["format_version"] >= 1
    assert not list(exported.parent.glob(".*partial*"))


def test_onnx_matches_pytorch_for_new_batch_sizes(exported, tiny_sam):
    """Decoder parity for B and P never seen in tracing or validation; encoder on a real photo."""
    skimage_data = pytest.importorskip("skimage.data")
    import cv2

    photo = skimage_data.chelsea()  # 300×451
    h, w = 1024 * photo.shape[0] // photo.shape[1] + 1, 1024
    resized = cv2.resize(photo, (w, h), interpolation=cv2.INTER_LINEAR).astype(np.float32)
    mean = np.array([123.675, 116.28, 103.53], np.float32)
    std = np.array([58.395, 57.12, 57.375], np.float32)
    image = np.zeros((1, 3, 1024, 1024), np.float32)
    image[0, :, :h, :w] = ((resized - mean) / std).transpose(2, 0, 1)
    enc = ort_session(exported / "encoder.onnx")
    got_embed = enc.run(None, {"image": image})[0]
    with torch.no_grad():
        ref_embed = tiny_sam.image_encoder(torch.from_numpy(image))
    assert np.abs(got_embed - ref_embed.numpy()).max() < SAM_ENCODER.tolerance["image_embeddings"]

    dec = ort_session(exported / "decoder.onnx")
    context = ort_session(exported / "decoder_context.onnx").run(None, {"image_embeddings": ref_embed.numpy()})[0]
    rng = np.random.default_rng(7)
    for batch, points in [(1, 1), (7, 2), (16, 1)]:
        coords = rng.uniform(0, 1024, size=(batch, points, 2)).astype(np.float32)
        labels = rng.choice(np.array([0.0, 1.0], np.float32), size=(batch, points))
        masks, iou = dec.run(None, {"image_context": context, "point_coords": coords, "point_labels": labels})
        ref_masks, ref_iou = sam_export.reference_decoder(tiny_sam, ref_embed, torch.from_numpy(coords),
                                                          torch.from_numpy(labels))
        assert masks.shape == (batch, 3, 256, 256) and iou.shape == (batch, 3)
        assert np.abs(masks - ref_masks.numpy()).max() < SAM_DECODER.tolerance["low_res_masks"]
        assert np.abs(iou - ref_iou.numpy()).max() < SAM_DECODER.tolerance["iou_predictions"]
        # the masks are not trivially constant (the check above means something)
        assert ref_masks.numpy().std() > 0.1


def test_fp16_export_keeps_norms_and_softmax_in_fp32(tiny_sam, tmp_path):
    manifest = sam_export.export_sam_model(tiny_sam, tmp_path / "sam16", "tiny", fp16=True)
    assert manifest["precision"] == "fp16"
    val = manifest["validation"]
    assert val["encoder"]["tolerance"] == SAM_ENCODER.tolerance_fp16
    for name, diff in val["decoder"]["max_abs_diff"].items():
        assert diff <= SAM_DECODER.tolerance_fp16[name]
    for name in ("encoder.onnx", "decoder.onnx"):
        model = onnx.shape_inference.infer_shapes(onnx.load(str(tmp_path / "sam16" / name)))
        graph = model.graph
        types = {v.name: v.type.tensor_type.elem_type for v in list(graph.value_info) + list(graph.input)
                 + list(graph.output)}
        types.update({i.name: i.data_type for i in graph.initializer})
        # I/O stays fp32, the big weights are fp16
        assert all(v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT for v in graph.input)
        assert all(v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT for v in graph.output)
        matmul_weights = [i for i in graph.initializer if len(i.dims) == 2 and min(i.dims) > 4]
        assert matmul_weights and all(i.data_type == onnx.TensorProto.FLOAT16 for i in matmul_weights)
        checked = 0
        for node in graph.node:
            if node.op_type in ("LayerNormalization", "Softmax"):
                assert types.get(node.input[0]) == onnx.TensorProto.FLOAT, (name, node.name)
                checked += 1
        assert checked > 0


def test_factored_decoder_matches_sam_in_pytorch(tiny_sam):
    """The re-associated decoder computes SAM's decoder (one and several points, every label kind)."""
    from eac.export.sam_graphs import DEFAULT_DECODER_GRAPH, decoder_module, synthetic_prompts

    assert DEFAULT_DECODER_GRAPH == "factored"
    module = decoder_module(tiny_sam, fp16=False)
    embeddings = torch.randn(1, 32, 64, 64, generator=torch.Generator().manual_seed(3))
    for batch, points, mixed in [(4, 1, False), (3, 3, True)]:
        coords, labels = synthetic_prompts(batch, points, 1024, seed=batch, mixed_labels=mixed)
        coords, labels = torch.from_numpy(coords), torch.from_numpy(labels)
        ref_masks, ref_iou = sam_export.reference_decoder(tiny_sam, embeddings, coords, labels)
        with torch.no_grad():
            masks, iou = module(embeddings, coords, labels)
        assert torch.allclose(masks, ref_masks, atol=1e-4) and torch.allclose(iou, ref_iou, atol=1e-5)
        assert ref_masks.std() > 0.1


def test_manifest_records_the_decoder_graph(exported, tiny_sam, tmp_path):
    """Default: a context graph once per image + a per-prompt decoder; the one-graph layouts stay available."""
    manifest = read_manifest(exported, "sam")
    decoder = manifest["decoder"]
    assert decoder["graph"] == "context" and decoder["inputs"][0] == "image_context"
    assert decoder["precompute"]["file"] == "decoder_context" and "decoder_context" in manifest["files"]
    assert decoder["shapes"]["image_context"] == [1, 64 * 64, 32 + 3 * 16]  # tiny SAM: C = 32, D = 16
    assert decoder["prompt_frame_size"] == 1024
    assert manifest["validation"]["decoder_context"]["max_abs_diff"]["image_context"] < 1e-3
    for graph in ("batched", "factored"):
        manifest = sam_export.export_sam_model(tiny_sam, tmp_path / graph, "tiny", validate=True,
                                               decoder_graph=graph)
        assert manifest["decoder"]["graph"] == graph and "precompute" not in manifest["decoder"]
        assert manifest["decoder"]["inputs"][0] == "image_embeddings"
    with pytest.raises(ExportError, match="unknown decoder graph"):
        sam_export.export_sam_model(tiny_sam, tmp_path / "bad", "tiny", decoder_graph="fast")


def test_int8_decoder_is_measured_and_runs(tiny_checkpoint, tmp_path, capsys, tiny_as_vit_b):
    """--decoder-precision int8: its deviation from the fp32 decoder is printed and kept; the runtime runs it."""
    out = tmp_path / "int8"
    rc = main(["export", "sam", "--model-type", "vit_b", "--checkpoint", str(tiny_checkpoint), "--out", str(out),
               "--decoder-precision", "int8"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "int8 decoder vs fp32" in printed and "max |logit diff|" in printed
    manifest = read_manifest(out, "sam")
    check = manifest["validation"]["decoder_precision"]
    assert manifest["decoder"]["precision"] == "int8" and check["precision"] == "int8"
    assert 0 < check["max_abs_logit_diff"] <= SAM_DECODER.tolerance_fp16["low_res_masks"]
    assert check["mask_iou_same_candidate"]["mean"] >= 0.9 and check["candidates"] == 3 * 16 * 16
    assert check["decoder_ms_per_prompt"]["int8"] > 0 and check["decoder_ms_per_prompt"]["fp32"] > 0
    types = {n.op_type for n in onnx.load(str(out / "decoder.onnx")).graph.node}
    assert types & {"DynamicQuantizeMatMul", "MatMulInteger", "DynamicQuantizeLinear"}
    from eac.engine.sam import SamConceptGenerator

    generator = SamConceptGenerator.from_folder(out, points_per_side=2, pred_iou_thresh=0.0,
                                                stability_score_thresh=0.0, box_nms_thresh=1.0)
    assert len(generator.generate(np.zeros((32, 48, 3), np.uint8))) >= 0
    with pytest.raises(ExportError, match="exclude each other"):
        sam_export.export_sam_model(build_tiny_sam(), tmp_path / "x", "tiny", fp16=True, decoder_precision="int8")
    with pytest.raises(ExportError, match="needs the default decoder layout"):
        sam_export.export_sam_model(build_tiny_sam(), tmp_path / "y", "tiny", decoder_precision="fp16",
                                    decoder_graph="batched")


def test_batched_decoder_graph_is_not_specialised_to_the_trace_batch(exported):
    model = onnx.load(str(exported / "decoder.onnx"))
    dims = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in model.graph.input}
    assert dims["point_coords"][:2] == ["batch", "points"]
    outs = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in model.graph.output}
    assert outs["low_res_masks"][0] == "batch" and outs["iou_predictions"][0] == "batch"


# --- errors ----------------------------------------------------------------------------------

def run_cli(args, capsys):
    rc = main(args)
    err = capsys.readouterr().err.strip()
    return rc, err


def test_cli_missing_checkpoint(tmp_path, capsys, tiny_as_vit_b):
    out = tmp_path / "out"
    rc, err = run_cli(["export", "sam", "--model-type", "vit_b", "--checkpoint", str(tmp_path / "nope.pth"),
                       "--out", str(out)], capsys)
    assert rc != 0 and len(err.splitlines()) == 1 and "nope.pth" in err and "not found" in err
    assert not out.exists()


def test_cli_truncated_checkpoint(tmp_path, capsys, tiny_checkpoint, tiny_as_vit_b):
    data = tiny_checkpoint.read_bytes()
    bad = tmp_path / "truncated.pth"
    bad.write_bytes(data[: len(data) // 2])
    out = tmp_path / "out"
    rc, err = run_cli(["export", "sam", "--model-type", "vit_b", "--checkpoint", str(bad), "--out", str(out)], capsys)
    assert rc != 0 and len(err.splitlines()) == 1 and "truncated" in err
    assert not out.exists() and not list(tmp_path.glob(".*partial*"))


def test_cli_wrong_model_type(tmp_path, capsys, tiny_checkpoint, monkeypatch):
    # vit_l = a different (still tiny) architecture: the tiny vit_b-shaped checkpoint does not fit it
    other = sam_loader.SamArchitecture(48, 3, 2, (2,), prompt_embed_dim=32, decoder_mlp_dim=64,
                                       decoder_num_heads=2, iou_head_hidden_dim=32, mask_in_chans=8)
    monkeypatch.setitem(sam_loader.SAM_ARCHITECTURES, "vit_l", other)
    monkeypatch.setitem(sam_loader.SAM_ARCHITECTURES, "vit_b", TINY_SAM)
    rc, err = run_cli(["export", "sam", "--model-type", "vit_l", "--checkpoint", str(tiny_checkpoint),
                       "--out", str(tmp_path / "o")], capsys)
    assert rc != 0 and len(err.splitlines()) == 1
    assert "not a vit_l checkpoint" in err and "embed dim 32, depth 2" in err and "looks like vit_b" in err


def test_not_a_sam_checkpoint(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"weight": torch.zeros(3)}, path)
    with pytest.raises(CheckpointError, match=r"not a vit_b checkpoint.*not a SAM checkpoint"):
        sam_loader.load_sam("vit_b", path)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"hello, not a zip")
    with pytest.raises(CheckpointError, match="cannot read the checkpoint"):
        sam_loader.read_state_dict(garbage)


def test_cli_non_empty_out_refused(tmp_path, capsys, tiny_checkpoint, tiny_as_vit_b):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    rc, err = run_cli(["export", "sam", "--model-type", "vit_b", "--checkpoint", str(tiny_checkpoint),
                       "--out", str(out)], capsys)
    assert rc != 0 and "not an empty folder" in err and len(err.splitlines()) == 1
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]


def test_unwritable_out(tmp_path, tiny_sam):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(ExportError, match="cannot create the output folder"):
        sam_export.export_sam_model(tiny_sam, blocker / "sub" / "sam", "tiny")


def test_empty_existing_out_is_used(tmp_path, tiny_sam):
    out = tmp_path / "empty"
    out.mkdir()
    manifest = sam_export.export_sam_model(tiny_sam, out, "tiny", validate=False)
    assert (out / "manifest.json").is_file() and manifest["validation"] == {"skipped": True}


def test_validation_failure_leaves_nothing(tmp_path, capsys, tiny_checkpoint, tiny_as_vit_b, monkeypatch):
    strict = sam_export.SAM_DECODER.__class__(**{**sam_export.SAM_DECODER.__dict__,
                                                 "tolerance": {"low_res_masks": 0.0, "iou_predictions": 0.0}})
    monkeypatch.setattr(sam_export, "SAM_DECODER", strict)
    with pytest.raises(ValidationError) as info:
        sam_export.export_sam("vit_b", tmp_path / "out", checkpoint=tiny_checkpoint)
    assert info.value.output in ("low_res_masks", "iou_predictions") and info.value.max_abs_diff > 0
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".*partial*"))

    # the CLI turns it into one line and a non-zero exit (same error, raised without re-tracing)
    def failing(*args, **kwargs):
        raise info.value

    monkeypatch.setattr(sam_export, "_validate", failing)
    rc, err = run_cli(["export", "sam", "--model-type", "vit_b", "--checkpoint", str(tiny_checkpoint),
                       "--out", str(tmp_path / "out")], capsys)
    assert rc != 0 and "differs from PyTorch" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_cli_without_torch_says_so_in_one_line(tmp_path, capsys, tiny_checkpoint, monkeypatch):
    """A runtime-only install (no torch): `eac export sam` fails in one line naming the extra."""
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError
    rc, err = run_cli(["export", "sam", "--model-type", "vit_b", "--checkpoint", str(tiny_checkpoint),
                       "--out", str(tmp_path / "out")], capsys)
    assert rc != 0 and len(err.splitlines()) == 1
    assert "needs PyTorch" in err and "export" in err and "Traceback" not in err
    with pytest.raises(ExportError, match="needs PyTorch"):
        sam_export.export_sam_model(object(), tmp_path / "o", "tiny")
    assert not (tmp_path / "out").exists() and not (tmp_path / "o").exists()


def test_opset_too_old(tmp_path, tiny_sam):
    with pytest.raises(ExportError, match="opset 13 is too old"):
        sam_export.export_sam_model(tiny_sam, tmp_path / "o", "tiny", opset=13)


def test_no_checkpoint_source(tmp_path):
    with pytest.raises(CheckpointError, match="--checkpoint PATH or --download"):
        sam_export.export_sam("vit_b", tmp_path / "o")


# --- checkpoint download -----------------------------------------------------------------------

class FakeResponse:
    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def read(self, n: int) -> bytes:
        chunk = self.data[self.pos:self.pos + n]
        self.pos += len(chunk)
        return chunk

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_download_offline_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("EAC_CACHE", str(tmp_path / "cache"))

    def offline(url, timeout):
        raise urllib.error.URLError("Name or service not known")

    with pytest.raises(CheckpointError) as info:
        sam_loader.ensure_checkpoint("vit_h", opener=offline)
    message = str(info.value)
    assert "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth" in message
    assert str(tmp_path / "cache" / "sam_vit_h_4b8939.pth") in message
    assert "\n" not in message
    assert not list((tmp_path / "cache").glob("*.part"))


def test_cli_download_offline(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("EAC_CACHE", str(tmp_path / "cache"))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("Temporary failure in name resolution")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    rc, err = run_cli(["export", "sam", "--model-type", "vit_b", "--download", "--out", str(tmp_path / "o")], capsys)
    assert rc != 0 and len(err.splitlines()) == 1
    assert "sam_vit_b_01ec64.pth" in err and str(tmp_path / "cache") in err and "--checkpoint" in err
    assert not (tmp_path / "o").exists()


def test_download_verifies_and_reuses(tmp_path, monkeypatch):
    import hashlib

    payload = os.urandom(3000)
    fake = sam_loader.OfficialCheckpoint("vit_b", "sam_fake.pth", "https://example.invalid/sam_fake.pth",
                                         len(payload), hashlib.sha256(payload).hexdigest())
    monkeypatch.setitem(sam_loader.OFFICIAL_CHECKPOINTS, "vit_b", fake)
    calls = []

    def opener(url, timeout):
        calls.append(url)
        return FakeResponse(payload)

    path = sam_loader.ensure_checkpoint("vit_b", cache=tmp_path, opener=opener)
    assert path == tmp_path / "sam_fake.pth" and path.read_bytes() == payload
    assert sam_loader.ensure_checkpoint("vit_b", cache=tmp_path, opener=opener) == path
    assert calls == [fake.url]  # reused, not downloaded again
    # a corrupted download is refused and removed
    bad = sam_loader.OfficialCheckpoint("vit_l", "sam_bad.pth", "https://example.invalid/sam_bad.pth",
                                        len(payload), "0" * 64)
    monkeypatch.setitem(sam_loader.OFFICIAL_CHECKPOINTS, "vit_l", bad)
    with pytest.raises(CheckpointError, match="corrupt"):
        sam_loader.ensure_checkpoint("vit_l", cache=tmp_path, opener=opener)
    assert not (tmp_path / "sam_bad.pth").exists() and not list(tmp_path.glob("*.part"))
    # a truncated file already in the cache is refused with the size
    (tmp_path / "sam_bad.pth").write_bytes(payload[:10])
    with pytest.raises(CheckpointError, match="10 bytes"):
        sam_loader.ensure_checkpoint("vit_l", cache=tmp_path, opener=opener)


def test_manifest_records_the_checkpoint_hash_and_the_official_url_only_when_downloaded(
        tmp_path, monkeypatch, tiny_checkpoint, tiny_as_vit_b):
    """Every checkpoint's SHA-256 is recorded; the official URL only for --download, whose published hash the
    download already checked (the file is not hashed again for the manifest)."""
    digest = file_sha256(tiny_checkpoint)
    official = sam_loader.OfficialCheckpoint("vit_b", tiny_checkpoint.name, "https://example.invalid/tiny.pth",
                                             tiny_checkpoint.stat().st_size, digest)
    monkeypatch.setitem(sam_loader.OFFICIAL_CHECKPOINTS, "vit_b", official)
    monkeypatch.setenv(sam_loader.CACHE_ENV, str(tiny_checkpoint.parent))
    hashed = []
    monkeypatch.setattr(sam_export, "file_sha256", lambda path: hashed.append(Path(path)) or file_sha256(path))
    base = ["export", "sam", "--model-type", "vit_b", "--skip-validation", "--out"]
    assert main([*base, str(tmp_path / "given"), "--checkpoint", str(tiny_checkpoint)]) == 0
    given = read_manifest(tmp_path / "given", "sam")["source"]
    assert given["checkpoint_sha256"] == digest and "official_url" not in given
    assert main([*base, str(tmp_path / "fetched"), "--download"]) == 0
    fetched = read_manifest(tmp_path / "fetched", "sam")["source"]
    assert fetched["checkpoint_sha256"] == digest and fetched["official_url"] == official.url
    assert hashed.count(tiny_checkpoint) == 1  # the --checkpoint run only


def test_official_checkpoint_table():
    for model_type, entry in sam_loader.OFFICIAL_CHECKPOINTS.items():
        assert entry.url.endswith(entry.filename) and model_type in entry.filename
        assert len(entry.sha256) == 64 and entry.bytes > 300_000_000
    assert set(sam_loader.OFFICIAL_CHECKPOINTS) == {"vit_b", "vit_l", "vit_h"}


# --- loader with and without torchvision ------------------------------------------------------

def run_python(code: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, env=env,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_loader_without_torchvision_does_not_touch_segment_anything():
    from eac.bench import tvshim

    if tvshim.torchvision_available():
        pytest.skip("torchvision is installed here: the regular package is used")
    code = (
        "import sys\n"
        "from eac.export.sam_loader import sam_modeling, build_sam_model\n"
        "from tests.sam_fixtures import TINY_SAM\n"
        "m = sam_modeling()\n"
        "sam = build_sam_model(TINY_SAM)\n"
        "print(m.origin, 'segment_anything' in sys.modules, 'torchvision' in sys.modules, type(sam).__name__)\n"
    )
    assert run_python(code) == "_eac_segment_anything False False Sam"


def test_loader_uses_real_package_when_torchvision_is_present():
    code = (
        "from eac.bench import tvshim\n"
        "tvshim.install()\n"
        "from eac.export.sam_loader import sam_modeling\n"
        "m = sam_modeling()\n"
        "import segment_anything\n"
        "print(m.origin, m.Sam is segment_anything.modeling.Sam)\n"
    )
    assert run_python(code) == "segment_anything True"


def test_real_architectures_have_official_shapes():
    arch = sam_loader.SAM_ARCHITECTURES
    a = arch["vit_b"]
    assert (a.encoder_embed_dim, a.encoder_depth, a.encoder_num_heads) == (768, 12, 12)
    a = arch["vit_l"]
    assert (a.encoder_embed_dim, a.encoder_depth, a.encoder_num_heads) == (1024, 24, 16)
    a = arch["vit_h"]
    assert (a.encoder_embed_dim, a.encoder_depth, a.encoder_num_heads) == (1280, 32, 16)
    assert arch["vit_h"].encoder_global_attn_indexes == (7, 15, 23, 31)


# --- the real ViT-B architecture --------------------------------------------------------------

@pytest.mark.slow
def test_vit_b_random_weights_export_through_cli(tmp_path, capsys):
    sam = sam_loader.build_sam_model(sam_loader.SAM_ARCHITECTURES["vit_b"])
    ckpt = save_checkpoint(sam, tmp_path / "sam_vit_b_random.pth")
    out = tmp_path / "vit_b"
    rc = main(["export", "sam", "--model-type", "vit_b", "--checkpoint", str(ckpt), "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["architecture"]["encoder_embed_dim"] == 768 and manifest["architecture"]["encoder_depth"] == 12
    assert manifest["decoder"]["precompute"]["input_shape"] == [1, 256, 64, 64]
    assert manifest["decoder"]["shapes"]["image_context"] == [1, 4096, 640]
    val = manifest["validation"]
    assert val["encoder"]["max_abs_diff"]["image_embeddings"] <= SAM_ENCODER.tolerance["image_embeddings"]
    for name, diff in val["decoder"]["max_abs_diff"].items():
        assert diff <= SAM_DECODER.tolerance[name]
    # independent parity check of the decoder on a batch size the export never used
    dec = ort_session(out / "decoder.onnx")
    rng = np.random.default_rng(3)
    embed = rng.standard_normal((1, 256, 64, 64)).astype(np.float32)
    coords = rng.uniform(0, 1024, size=(9, 1, 2)).astype(np.float32)
    labels = np.ones((9, 1), np.float32)
    context = ort_session(out / "decoder_context.onnx").run(None, {"image_embeddings": embed})[0]
    masks, iou = dec.run(None, {"image_context": context, "point_coords": coords, "point_labels": labels})
    ref_masks, ref_iou = sam_export.reference_decoder(sam, torch.from_numpy(embed), torch.from_numpy(coords),
                                                      torch.from_numpy(labels))
    assert np.abs(masks - ref_masks.numpy()).max() < SAM_DECODER.tolerance["low_res_masks"]
    assert np.abs(iou - ref_iou.numpy()).max() < SAM_DECODER.tolerance["iou_predictions"]


def test_external_data_above_the_protobuf_limit(tmp_path, tiny_sam, monkeypatch):
    """Graphs over the 2 GB protobuf limit (ViT-H) keep their weights in one .data file; it loads."""
    monkeypatch.setattr(export_common, "PROTOBUF_LIMIT_BYTES", 200_000)  # the tiny graphs are ~0.8 MB
    monkeypatch.setattr(export_common, "PROTOBUF_MARGIN_BYTES", 0)
    out = tmp_path / "sam"
    manifest = sam_export.export_sam_model(tiny_sam, out, "tiny")  # validation loads both graphs
    assert sorted(p.name for p in out.iterdir()) == [
        "decoder.onnx", "decoder.onnx.data", "decoder_context.onnx", "decoder_context.onnx.data", "encoder.onnx",
        "encoder.onnx.data", "manifest.json"]
    assert manifest["files"]["encoder_data"]["path"] == "encoder.onnx.data"
    assert (out / "encoder.onnx").stat().st_size < 200_000 < (out / "encoder.onnx.data").stat().st_size
    from eac.engine.sam import SamConceptGenerator

    generator = SamConceptGenerator.from_folder(out, points_per_side=2)
    assert len(generator.generate(np.zeros((32, 48, 3), np.uint8))) == 0
