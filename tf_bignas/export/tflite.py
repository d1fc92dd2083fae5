"""SavedModel -> TFLite with named quantisation types, built-in ops only.

Following TF Model Garden's `export_tflite_lib`, one function,
`convert_saved_model(saved_model_dir, quantization, ...)`, converts a
SavedModel's serving signature with one of the named quantisation types:

- ``fp32``: no quantisation;
- ``fp16``: float16 weights, float32 compute where the runtime wants it;
- ``int8``: full-integer quantisation calibrated on representative images
  (every op int8; the input and output int8, uint8 or float as asked).

Only TFLite's built-in ops are allowed: the converter is given the built-in
op set alone, so a graph that needs a Flex (select TF) op fails with an error
naming it, and the converted flatbuffer is then read back (`op_list`) and
rejected if it holds a custom op or a resource-variable op (`VAR_HANDLE`,
`READ_VARIABLE`, `ASSIGN_VARIABLE`, `CALL_ONCE`, hash tables). `TFLiteRunner`
runs a file with ai-edge-litert's interpreter (XNNPACK on), quantising inputs
and dequantising outputs as the file says.
"""

from __future__ import annotations

import re
import types
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from tf_bignas.common.text import clean
from tf_bignas.export.errors import ExportError, InvalidModelError, UnsupportedOpError

QUANTIZATIONS = ("fp32", "fp16", "int8")
INT8_IO = ("int8", "uint8", "float")
# Built-in op codes that hold or touch state: a deployable file must have none.
STATEFUL_OPS = frozenset(
    {
        "VAR_HANDLE",
        "READ_VARIABLE",
        "ASSIGN_VARIABLE",
        "CALL_ONCE",
        "HASHTABLE",
        "HASHTABLE_FIND",
        "HASHTABLE_IMPORT",
        "HASHTABLE_SIZE",
        "HASHTABLE_LOOKUP",
    }
)
SIGNATURE_KEY = "serving_default"
_IO_TYPES = types.MappingProxyType({"int8": tf.int8, "uint8": tf.uint8, "float": tf.float32})


def parse_quantizations(names: str | Sequence[str]) -> tuple[str, ...]:
    """Reads quantisation names ("fp32,fp16,int8" or a sequence).

    Args:
        names: Comma-separated names or a sequence of names.

    Returns:
        The names in canonical order (fp32, fp16, int8), without duplicates.

    Raises:
        ExportError: If a name is unknown or none is given.
    """
    items = names.split(",") if isinstance(names, str) else list(names)
    items = [str(n).strip().lower() for n in items if str(n).strip()]
    unknown = [n for n in items if n not in QUANTIZATIONS]
    if unknown or not items:
        raise ExportError(
            f"unknown quantisation {unknown or names!r}; allowed: {list(QUANTIZATIONS)} "
            "(comma-separated, e.g. fp32,fp16,int8)"
        )
    return tuple(q for q in QUANTIZATIONS if q in items)


def check_int8_io(int8_io: str) -> str:
    """Validates the int8 model's input/output type name.

    Raises:
        ExportError: If it is not one of `INT8_IO`.
    """
    if int8_io not in INT8_IO:
        raise ExportError(f"unknown int8 input/output type {int8_io!r}; allowed: {list(INT8_IO)}")
    return int8_io


def _schema():
    from ai_edge_litert import schema_py_generated

    return schema_py_generated


METADATA_LABELS = "labels"  # labels.txt's text: one class name per line, index order
METADATA_CONTRACT = "tf_bignas_input_contract"  # JSON: normalisation, resolution, layout


def add_metadata(content: bytes, entries: dict[str, bytes]) -> bytes:
    """The flatbuffer with named metadata buffers added (same-named ones replaced).

    TFLite's model schema holds a list of (name, buffer) metadata entries that
    the interpreter ignores and any flatbuffer reader (`read_metadata`,
    `flatbuffer_utils`) reads back. The standard `TFLITE_METADATA` entry
    (metadata_schema.fbs, written by tflite-support's MetadataWriter) cannot be
    written here: tflite-support needs protobuf < 4, which TensorFlow 2.21
    does not allow; the labels and the input contract go in as entries of
    their own (`METADATA_LABELS`, `METADATA_CONTRACT`).

    Args:
        content: The flatbuffer.
        entries: {name: bytes}.

    Returns:
        The new flatbuffer (operators, tensors and weights unchanged).
    """
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(content))
    schema = _schema()
    kept = [m for m in (model.metadata or []) if _name(m.name) not in entries]
    for name, data in entries.items():
        buffer = schema.BufferT()
        buffer.data = list(data)
        model.buffers.append(buffer)
        entry = schema.MetadataT()
        entry.name = name
        entry.buffer = len(model.buffers) - 1
        kept.append(entry)
    model.metadata = kept
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def _name(value: bytes | str | None) -> str:
    return value.decode() if isinstance(value, bytes) else str(value or "")


def read_metadata(content: bytes) -> dict[str, bytes]:
    """The named metadata buffers of a flatbuffer ({name: bytes})."""
    schema = _schema()
    model = schema.Model.GetRootAs(content, 0)
    out = {}
    for i in range(model.MetadataLength()):
        m = model.Metadata(i)
        buffer = model.Buffers(m.Buffer())
        out[_name(m.Name())] = bytes(buffer.DataAsNumpy()) if buffer.DataLength() else b""
    return out


def op_list(content: bytes) -> list[str]:
    """The operators of a TFLite flatbuffer, in execution order.

    Args:
        content: The flatbuffer.

    Returns:
        One name per operator, subgraph after subgraph: the built-in op name
        (e.g. "CONV_2D"), or "CUSTOM:<code>" for a custom op (Flex ops have
        codes "Flex<TF op>").
    """
    schema = _schema()
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    model = schema.Model.GetRootAs(content, 0)
    codes = []
    for i in range(model.OperatorCodesLength()):
        oc = model.OperatorCodes(i)
        code = max(oc.BuiltinCode(), oc.DeprecatedBuiltinCode())
        if code == schema.BuiltinOperator.CUSTOM:
            custom = oc.CustomCode()
            codes.append("CUSTOM:" + (custom.decode() if custom else "?"))
        else:
            codes.append(names.get(code, f"BUILTIN_{code}"))
    out = []
    for s in range(model.SubgraphsLength()):
        graph = model.Subgraphs(s)
        for o in range(graph.OperatorsLength()):
            out.append(codes[graph.Operators(o).OpcodeIndex()])
    return out


def check_builtin_ops(content: bytes, what: str = "the converted model") -> list[str]:
    """Rejects a flatbuffer that holds anything but stateless built-in ops.

    Args:
        content: The flatbuffer.
        what: How to name the model in the error.

    Returns:
        Its op list (`op_list`).

    Raises:
        UnsupportedOpError: Naming every Flex, custom or resource-variable op.
    """
    ops = op_list(content)
    flex = sorted({o[len("CUSTOM:Flex") :] for o in ops if o.startswith("CUSTOM:Flex")})
    custom = sorted({o[len("CUSTOM:") :] for o in ops if o.startswith("CUSTOM:")} - set(
        "Flex" + f for f in flex
    ))  # fmt: skip
    stateful = sorted({o for o in ops if o in STATEFUL_OPS})
    problems = []
    if flex:
        problems.append(f"Flex (select TF) ops {flex}")
    if custom:
        problems.append(f"custom ops {custom}")
    if stateful:
        problems.append(f"resource-variable ops {stateful}")
    if problems:
        raise UnsupportedOpError(
            f"{what} needs {' and '.join(problems)}; only TFLite built-in ops without state "
            "are allowed (freeze variables into constants; replace the ops with built-in ones)"
        )
    return ops


def _converter_error(error: Exception, quantization: str) -> ExportError:
    text = str(error)
    select = re.findall(r"TF Select ops: ([^\n]+)", text)
    unsupported = sorted(
        set(re.findall(r"'tf\.(\w+)' op is neither a custom op nor a flex op", text))
    )
    names = sorted({n.strip() for line in select for n in line.split(",")} | set(unsupported))
    if names:
        return UnsupportedOpError(
            f"the {quantization} TFLite conversion needs TensorFlow ops outside TFLite's built-in "
            f"set: {names}; Flex (select TF) ops are not allowed in exported files (replace "
            "them with built-in ops)"
        )
    first = text.strip().splitlines()[0] if text.strip() else type(error).__name__
    return ExportError(f"the {quantization} TFLite conversion failed: {first}")


def convert_saved_model(
    saved_model_dir: str,
    quantization: str,
    *,
    representative_images: Callable[[], Iterable[np.ndarray]] | None = None,
    int8_io: str = "uint8",
    signature_key: str = SIGNATURE_KEY,
) -> bytes:
    """Converts a SavedModel's signature to TFLite with a named quantisation type.

    Args:
        saved_model_dir: The SavedModel (one float input, e.g. an exported child).
        quantization: One of `QUANTIZATIONS`.
        representative_images: For int8: a callable returning an iterable of
            input images [1, H, W, C] (float32, as the model's input expects),
            from the training data.
        int8_io: For int8: the file's input and output type, one of `INT8_IO`.
        signature_key: The signature to convert.

    Returns:
        The TFLite flatbuffer (checked: built-in, stateless ops only).

    Raises:
        ExportError: On an unknown quantisation or int8 type, or int8 without
            representative images, or a failed conversion.
        UnsupportedOpError: If the model needs a Flex, custom or
            resource-variable op.
    """
    if quantization not in QUANTIZATIONS:
        raise ExportError(f"unknown quantisation {quantization!r}; allowed: {list(QUANTIZATIONS)}")
    converter = tf.lite.TFLiteConverter.from_saved_model(
        saved_model_dir, signature_keys=[signature_key]
    )
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if quantization == "fp16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif quantization == "int8":
        check_int8_io(int8_io)
        if representative_images is None:
            raise ExportError("int8 quantisation needs representative images")

        def dataset() -> Iterable[list[np.ndarray]]:
            for image in representative_images():
                yield [np.asarray(image, np.float32)]

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = dataset
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = _IO_TYPES[int8_io]
        converter.inference_output_type = _IO_TYPES[int8_io]
    try:
        content = converter.convert()
    except Exception as e:  # ConverterError and friends: name the ops if we can.
        raise _converter_error(e, quantization) from e
    check_builtin_ops(content, f"the {quantization} TFLite model")
    return content


def _tensor_contract(detail: dict[str, Any], name: str | None) -> dict[str, Any]:
    scale, zero_point = detail["quantization"]
    out: dict[str, Any] = {
        "name": name or detail["name"],
        "tensor": detail["name"],
        "dtype": np.dtype(detail["dtype"]).name,
        "shape": [int(d) for d in detail["shape_signature"]],
    }
    if scale:
        out["quantization"] = {
            "scale": float(scale),
            "zero_point": int(zero_point),
            "real_value": "scale * (q - zero_point)",
        }
    return out


class TFLiteRunner:
    """Runs a TFLite file with ai-edge-litert's interpreter (XNNPACK on).

    Args:
        content: The flatbuffer, or None to read `path`.
        path: A .tflite file (if `content` is None).
        num_threads: Interpreter threads.

    Raises:
        InvalidModelError: If the content or file is not a loadable TFLite
            model (the message names the file).
    """

    def __init__(
        self, content: bytes | None = None, path: str | None = None, num_threads: int = 1
    ) -> None:
        from ai_edge_litert.interpreter import Interpreter

        if content is None and path is None:
            raise ValueError("TFLiteRunner needs content or path")
        what = "the converted model" if content is not None else path
        try:
            self.interpreter = Interpreter(
                model_content=content, model_path=None if content is not None else path,
                num_threads=num_threads,
            )  # fmt: skip
            self.interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as e:
            raise InvalidModelError(
                f"{what} is not a TFLite model LiteRT can load ({clean(e, one_line=True)}); "
                "a .tflite file must be a TFLite flatbuffer, as tools.export writes"
            ) from e
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]

    def contract(self) -> dict[str, Any]:
        """The file's input and output: signature and tensor names, dtype, shape, quantisation."""
        signatures = self.interpreter.get_signature_list()
        key = SIGNATURE_KEY if SIGNATURE_KEY in signatures else next(iter(signatures), None)
        names = signatures.get(key, {}) if key else {}
        inputs, outputs = names.get("inputs", []), names.get("outputs", [])
        return {
            "signature": key,
            "input": _tensor_contract(self.input, inputs[0] if len(inputs) == 1 else None),
            "output": _tensor_contract(self.output, outputs[0] if len(outputs) == 1 else None),
        }

    def quantize_input(self, images: np.ndarray) -> np.ndarray:
        """Real-valued images -> what the input tensor takes.

        Args:
            images: Images on the model's real input scale (raw pixels when
                the normalisation is folded in).

        Returns:
            The array in the input's dtype (quantised when the input is).
        """
        dtype = np.dtype(self.input["dtype"])
        x = np.asarray(images, np.float32)
        if dtype == np.float32:
            return x
        scale, zero_point = self.input["quantization"]
        if scale:
            x = x / scale + zero_point
        info = np.iinfo(dtype)
        return np.clip(np.round(x), info.min, info.max).astype(dtype)

    def dequantize_output(self, values: np.ndarray) -> np.ndarray:
        """The output tensor -> float logits."""
        scale, zero_point = self.output["quantization"]
        if scale:
            return (values.astype(np.float32) - zero_point) * scale
        return values.astype(np.float32)

    def invoke(self, array: np.ndarray) -> np.ndarray:
        """One call with an input already in the input's dtype and shape."""
        self.interpreter.set_tensor(self.input["index"], array)
        self.interpreter.invoke()
        return self.interpreter.get_tensor(self.output["index"])

    def logits(self, images: np.ndarray) -> np.ndarray:
        """Float logits of a batch, one invocation per image (batch 1, as deployed).

        Args:
            images: [N, H, W, C] images on the model's real input scale.

        Returns:
            float32 [N, num_classes].
        """
        x = self.quantize_input(images)
        return np.concatenate(
            [self.dequantize_output(self.invoke(x[i : i + 1])) for i in range(len(x))]
        )
