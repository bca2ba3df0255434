"""All graph surgery of the precision stage: BatchNorm folding, the exact ConvTranspose rewrite, untying shared
biases, and `prepare_int8`, which applies them to give the graph the INT8 quantizer sees.

The ConvTranspose rewrite: DCGAN's transposed convolutions into ordinary convolutions + DepthToSpace.

Why: onnxruntime has no quantized ConvTranspose kernel on CPU, so in a Q/DQ model every ConvTranspose is
dequantized, run in FP32 and requantized, which makes the INT8 model slower than the FP32 one. The same layer
is a known INT8 weak spot in TensorRT. Ordinary convolutions have INT8 kernels everywhere.

The two transposed convolutions a DCGAN generator is made of have exact equivalents:

* stride 2, kernel 4, padding 1 (every upsampling layer): output pixel (2m+a, 2n+b) only ever sees input rows
  {m-1+a, m+a} and columns {n-1+b, n+b}, through kernel taps 3-a-2t (t = 0, 1) of each axis. So each of the four
  output phases (a, b) is a 2x2 convolution with its own slice of the kernel and padding (top 1-a, bottom a,
  left 1-b, right b). The four phase outputs are concatenated on the channel axis, phase-major, and
  DepthToSpace(blocksize 2, mode DCR) interleaves them into the 2x upsampled image. Same multiply-adds as the
  transposed convolution, none wasted on zero taps.
* stride 1, padding 0, kernel K on a 1x1 input (the first layer, latent -> 4x4): every output pixel (a, b) is
  latent @ W[:, :, a, b]. One 1x1 convolution with K*K*Cout outputs, then DepthToSpace(K, DCR).

`fold_batchnorms` first folds inference-mode BatchNormalization into the layer before it, so the rewritten
convolutions carry the normalization in their weights. Other transposed convolutions are left as they are
and listed in the report.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gan_deploy.core.errors import GanDeployError


@dataclass
class RewriteReport:
    rewritten: list[str] = field(default_factory=list)  # "name: ConvTranspose k4 s2 p1 -> 4 x Conv 2x2 + DepthToSpace(2)"
    kept: list[str] = field(default_factory=list)  # "name: reason"

    def summary(self) -> str:
        s = f"{len(self.rewritten)} ConvTranspose rewritten to Conv + DepthToSpace"
        if self.kept:
            s += f"; kept (no exact rewrite): {'; '.join(self.kept)}"
        return s


def _attrs(node) -> dict:
    import onnx
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


class _Graph:
    """Constant lookup (initializers, Constant nodes, Identity of either) and consumer counts."""

    def __init__(self, model):
        import onnx
        from onnx import numpy_helper

        g = model.graph
        self.inits = {i.name: i for i in g.initializer}
        self.values: dict[str, np.ndarray] = {}
        for n in g.node:
            if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
                self.values[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
        self.identity = {n.output[0]: n.input[0] for n in g.node if n.op_type == "Identity"}
        self.consumers: dict[str, list] = {}
        for n in g.node:
            for i in n.input:
                self.consumers.setdefault(i, []).append(n)
        self.graph_outputs = {o.name for o in g.output}
        self._np = numpy_helper
        self._onnx = onnx

    def const(self, name: str) -> np.ndarray | None:
        seen = 0
        while name in self.identity and seen < 8:  # the exporter dedups equal tensors through Identity
            name, seen = self.identity[name], seen + 1
        if name in self.inits:
            return self._np.to_array(self.inits[name])
        return self.values.get(name)


def _spatial_shapes(model) -> dict[str, list]:
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception:  # shape inference is only needed to recognise 1x1 inputs; without it we rewrite less
        return {}
    shapes = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        dims = vi.type.tensor_type.shape.dim
        shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    return shapes


def _bn_after(gr: _Graph, node):
    """The inference-mode BatchNormalization that is the only consumer of `node`, as (node, scale, shift)."""
    out = node.output[0]
    users = gr.consumers.get(out, [])
    if out in gr.graph_outputs or len(users) != 1 or users[0].op_type != "BatchNormalization":
        return None
    bn = users[0]
    if _attrs(bn).get("training_mode", 0) != 0 or len(bn.output) != 1:
        return None
    params = [gr.const(n) for n in bn.input[1:5]]
    if any(p is None for p in params):
        return None
    gamma, beta, mean, var = (p.astype(np.float64) for p in params)
    scale = gamma / np.sqrt(var + float(_attrs(bn).get("epsilon", 1e-5)))
    return bn, scale, beta - mean * scale


def fold_batchnorms(model):
    """Fold every inference-mode BatchNormalization that directly follows a Conv or ConvTranspose with constant
    weights into that layer's weights and bias (in float64). Returns (new model, number folded).

    Exact up to float rounding. Reduced precision needs it: INT8 calibration and FP16 casting then see the
    folded weights (one rounding instead of two), and TensorRT's strongly typed mode cannot fuse an FP32
    normalization into an FP16 convolution.
    """
    import onnx
    from onnx import numpy_helper

    src = model
    model = onnx.ModelProto.FromString(src.SerializeToString())
    gr = _Graph(src)
    nodes, inits, folded = [], [], set()
    for node in src.graph.node:
        if node.op_type in ("Conv", "ConvTranspose") and _attrs(node).get("group", 1) == 1:
            w = gr.const(node.input[1])
            hit = _bn_after(gr, node) if w is not None and w.ndim >= 3 else None
            if hit is not None:
                bn, scale, shift = hit
                axis = 1 if node.op_type == "ConvTranspose" else 0  # which weight axis is the output channel
                shape = [1] * w.ndim
                shape[axis] = -1
                w64 = w.astype(np.float64) * scale.reshape(shape)
                has_b = len(node.input) > 2 and node.input[2]
                b = gr.const(node.input[2]) if has_b else None
                if has_b and b is None:
                    nodes.append(node)
                    continue
                b64 = (b.astype(np.float64) if b is not None else 0.0) * scale + shift
                base = (node.name or node.output[0]).strip("/").replace("/", "_") + "_bnfold"
                inits += [numpy_helper.from_array(w64.astype(np.float32), base + "_w"),
                          numpy_helper.from_array(b64.astype(np.float32), base + "_b")]
                new = onnx.NodeProto()
                new.CopyFrom(node)
                del new.input[:]
                new.input.extend([node.input[0], base + "_w", base + "_b"])
                del new.output[:]
                new.output.append(bn.output[0])  # the layer now produces what the normalization produced
                nodes.append(new)
                folded.add(bn.output[0])
                continue
        nodes.append(node)
    nodes = [n for n in nodes if not (n.op_type == "BatchNormalization" and n.output[0] in folded)]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    model.graph.initializer.extend(inits)
    drop_unused(model)
    return model, len(folded)


OUTPUT_ACTIVATIONS = frozenset({"Tanh", "Sigmoid", "Clip", "HardSigmoid"})  # a generator's last activation: kept FP32 by the passes
ACTIVATIONS = ("Relu", "LeakyRelu")  # elementwise, so they commute with concatenation and pixel shuffles


def _sole_activation(gr: _Graph, node):
    out = node.output[0]
    users = gr.consumers.get(out, [])
    if out in gr.graph_outputs or len(users) != 1 or users[0].op_type not in ACTIVATIONS:
        return None
    return users[0]


def phase_weights_s2k4p1(w: np.ndarray) -> list[tuple[int, int, np.ndarray]]:
    """ConvTranspose weight [Cin, Cout, 4, 4] -> per phase (a, b) the Conv weight [Cout, Cin, 2, 2].

    Output row 2m+a reads input rows m-1+a+t (t = 0, 1) through kernel row 3-a-2t (derivation in the module doc).
    """
    out = []
    for a in (0, 1):
        for b in (0, 1):
            rows = [3 - a - 2 * t for t in (0, 1)]
            cols = [3 - b - 2 * u for u in (0, 1)]
            k = w[:, :, rows][:, :, :, cols]  # [Cin, Cout, 2, 2]
            out.append((a, b, np.ascontiguousarray(k.transpose(1, 0, 2, 3))))
    return out


# over 80 lines: one walk over the graph, each ConvTranspose either rewritten (two exact cases, sharing the
# activation hoisting and the node bookkeeping) or listed as kept with its reason; the cases read best side by side
def conv_from_conv_transpose(model, hoist_activation: bool = True):
    """Return (new ModelProto, RewriteReport): DCGAN's ConvTranspose layers as Conv + DepthToSpace.

    The input model is not modified. Run `fold_batchnorms` first so normalizations ride along in the weights.
    hoist_activation: a ReLU/LeakyReLU right after the layer is applied to each convolution instead (exact:
    elementwise ops commute with Concat and DepthToSpace). Quantized runtimes then fuse it into the
    convolution, and DepthToSpace's input and output get the same quantization range, so onnxruntime moves
    8-bit data through it instead of dequantizing around it (measured: INT8 batch 256, 128 -> 110 ms).
    """
    import onnx
    from onnx import helper, numpy_helper

    src = model  # read from the caller's model, write into a copy
    model = onnx.ModelProto.FromString(src.SerializeToString())
    gr = _Graph(src)
    shapes = _spatial_shapes(src)
    report = RewriteReport()
    nodes, inits = [], []
    hoisted: set[str] = set()  # outputs of activations now applied before the shuffle

    def const(name: str, arr: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(arr.astype(np.float32), name))
        return name


    for node in src.graph.node:
        if node.op_type != "ConvTranspose":
            nodes.append(node)
            continue
        name = node.name or node.output[0]
        at = _attrs(node)
        w = gr.const(node.input[1])
        has_b = len(node.input) > 2 and bool(node.input[2])
        bias = gr.const(node.input[2]) if has_b else None
        k = list(at.get("kernel_shape", w.shape[2:] if w is not None else []))
        s, p = list(at.get("strides", [1, 1])), list(at.get("pads", [0, 0, 0, 0]))
        in_hw = (shapes.get(node.input[0]) or [None] * 4)[2:]
        why = None
        if w is None or w.ndim != 4 or (has_b and bias is None):
            why = "weights or bias not constant, or not 2-D"
        elif at.get("group", 1) != 1 or any(d != 1 for d in at.get("dilations", [1, 1])):
            why = "grouped or dilated"
        elif any(at.get("output_padding", [0, 0])) or "output_shape" in at or at.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
            why = "output_padding, output_shape or auto_pad set"
        if why is None and k == [4, 4] and s == [2, 2] and p == [1, 1, 1, 1]:
            kind = "s2"
        elif why is None and s == [1, 1] and p == [0, 0, 0, 0] and k[0] == k[1] and in_hw == [1, 1]:
            kind = "1x1"
        else:
            report.kept.append(f"{name}: {why or f'kernel {k} stride {s} pads {p} input {in_hw}'}")
            nodes.append(node)
            continue

        w64 = w.astype(np.float64)
        cout = w.shape[1]
        b64 = bias.astype(np.float64) if bias is not None else np.zeros(cout)
        base = name.strip("/").replace("/", "_") + "_rw"
        out_name = node.output[0]
        # an elementwise activation right after the layer commutes with the pixel shuffle: apply it per
        # convolution, before the shuffle, so quantized runtimes fuse it into the convolution and the shuffle
        # moves 8-bit data with one scale (otherwise the shuffle's input and output ranges differ)
        act = _sole_activation(gr, node) if hoist_activation else None
        if act is not None:
            out_name = act.output[0]
            hoisted.add(out_name)

        def activated(x: str) -> str:
            if act is None:
                return x
            nodes.append(helper.make_node(act.op_type, [x], [x + "_act"], name=x + "_act", **_attrs(act)))
            return x + "_act"

        if kind == "s2":
            phases = []
            for a, b, wk in phase_weights_s2k4p1(w64):
                o = f"{base}_phase{a}{b}"
                nodes.append(helper.make_node("Conv", [node.input[0], const(o + "_w", wk), const(o + "_b", b64)], [o],
                                              name=o, kernel_shape=[2, 2], pads=[1 - a, 1 - b, a, b], strides=[1, 1]))
                phases.append(activated(o))
            nodes.append(helper.make_node("Concat", phases, [base + "_phases"], name=base + "_concat", axis=1))
            nodes.append(helper.make_node("DepthToSpace", [base + "_phases"], [out_name], name=base + "_d2s",
                                          blocksize=2, mode="DCR"))
            report.rewritten.append(f"{name}: ConvTranspose k4 s2 p1 -> 4 x Conv 2x2 + DepthToSpace(2)")
        else:
            kk = k[0]
            # [Cin, Cout, K, K] -> output channel (a*K + b)*Cout + o, the order DepthToSpace DCR reads
            wc = w64.transpose(2, 3, 1, 0).reshape(kk * kk * cout, w.shape[0], 1, 1)
            nodes.append(helper.make_node("Conv", [node.input[0], const(base + "_w", wc), const(base + "_b", np.tile(b64, kk * kk))],
                                          [base + "_pix"], name=base + "_conv1x1", kernel_shape=[1, 1]))
            nodes.append(helper.make_node("DepthToSpace", [activated(base + "_pix")], [out_name], name=base + "_d2s",
                                          blocksize=kk, mode="DCR"))
            report.rewritten.append(f"{name}: ConvTranspose k{kk} s1 p0 on 1x1 -> Conv 1x1 + DepthToSpace({kk})")

    nodes = [n for n in nodes if not (n.op_type in ACTIVATIONS and n.output[0] in hoisted)]  # the originals
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    model.graph.initializer.extend(inits)
    drop_unused(model)
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as e:  # a bug here, not the user's: say so plainly
        raise GanDeployError("ConvTranspose rewrite produced an invalid ONNX graph", str(e).splitlines()[0], hint="pass --no-rewrite to quantize the original graph") from None
    return model, report


def drop_unused(model) -> None:
    """Remove initializers and Identity/Constant nodes nothing reads any more (the replaced layers' weights)."""
    while True:
        used = {i for n in model.graph.node for i in n.input} | {o.name for o in model.graph.output}
        dead = [n for n in model.graph.node if n.op_type in ("Identity", "Constant") and n.output[0] not in used]
        keep_init = [i for i in model.graph.initializer if i.name in used]
        if not dead and len(keep_init) == len(model.graph.initializer):
            return
        live = [n for n in model.graph.node if not (n.op_type in ("Identity", "Constant") and n.output[0] not in used)]
        del model.graph.node[:]
        model.graph.node.extend(live)
        del model.graph.initializer[:]
        model.graph.initializer.extend(keep_init)


def unquantize_inputs(model, names: list[str]) -> int:
    """Remove the QuantizeLinear -> DequantizeLinear pair feeding each named node, when the pair serves that node
    alone: the node then reads the float tensor the pair rounded. Returns the pairs removed."""
    producer = {o: n for n in model.graph.node for o in n.output}
    readers: dict[str, int] = {}
    for n in model.graph.node:
        for i in n.input:
            readers[i] = readers.get(i, 0) + 1
    dropped: set[int] = set()
    for n in model.graph.node:
        if n.name not in names:
            continue
        for k, x in enumerate(n.input):
            dq = producer.get(x)
            q = producer.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
            if q is None or q.op_type != "QuantizeLinear" or readers.get(dq.output[0]) != 1 or readers.get(q.output[0]) != 1:
                continue
            n.input[k] = q.input[0]
            dropped |= {id(q), id(dq)}
    if dropped:
        live = [n for n in model.graph.node if id(n) not in dropped]
        del model.graph.node[:]
        model.graph.node.extend(live)
        drop_unused(model)
    return len(dropped) // 2


def prepare_int8(model, rewrite: bool = True):
    """The graph the quantizer sees: BatchNorm folded, ConvTranspose rewritten (above), every node named
    (policies and the sensitivity report refer to nodes by name). Returns (model, recipe entries)."""
    model, n_bn = fold_batchnorms(model)
    recipe: dict[str, Any] = {"batchnorm_folded": n_bn}
    if rewrite:
        model, rw = conv_from_conv_transpose(model)
        recipe["rewrite"] = {"rewritten": rw.rewritten, "kept": rw.kept}
    n_untied = untie_biases(model)
    if n_untied:
        recipe["untied_biases"] = n_untied
    seen: set[str] = set()
    for k, node in enumerate(model.graph.node):
        if not node.name or node.name in seen:
            node.name = f"{node.op_type}_{k}_{node.output[0] if node.output else ''}"
        seen.add(node.name)
    return model, recipe


BIAS_INPUT = {"Conv": 2, "ConvTranspose": 2, "Gemm": 2}


def untie_biases(model) -> int:
    """Give every Conv/ConvTranspose/Gemm its own bias initializer, in place. Returns how many were untied.

    The PyTorch exporter stores equal tensors once (later uses read it through Identity nodes): biases that are
    still at their initial value (StyleGAN's style affines all start at 1, mapping layers at 0) end up shared.
    onnxruntime's quantizer then quantizes the shared bias once, to INT32 with the *first* layer's scale
    (input scale x weight scale), and every other quantized layer's fused kernel reads those integers with its
    own scale: measured on the tiny variant of the StyleGAN2-style example, two style affines quantized together gave 23.6 dB worst
    PSNR where each alone gave 41 dB (the unfused Q/DQ graph, which dequantizes the bias with the right scale,
    was fine). A private copy per layer costs a few hundred bytes per layer and makes each bias scale its own.
    """
    from onnx import numpy_helper

    g = model.graph
    inits = {i.name: i for i in g.initializer}
    ident = {n.output[0]: n.input[0] for n in g.node if n.op_type == "Identity" and n.input and n.output}

    def source(name: str) -> str:
        seen = 0
        while name in ident and seen < 16:
            name, seen = ident[name], seen + 1
        return name

    uses: dict[str, int] = {}
    for n in g.node:
        if n.op_type == "Identity":
            continue
        for i in n.input:
            if i:
                s = source(i)
                uses[s] = uses.get(s, 0) + 1
    untied = 0
    for n in g.node:
        k = BIAS_INPUT.get(n.op_type)
        if k is None or len(n.input) <= k or not n.input[k]:
            continue
        src = source(n.input[k])
        if src not in inits:
            continue
        if uses.get(src, 0) > 1:
            copy = numpy_helper.from_array(numpy_helper.to_array(inits[src]).copy(), f"{src}__untied_{untied}")
            g.initializer.append(copy)
            n.input[k] = copy.name
            untied += 1
        elif n.input[k] != src:
            n.input[k] = src  # the only user: read the initializer itself, not an Identity of it
    if untied:
        drop_unused(model)
    return untied
