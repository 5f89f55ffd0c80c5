"""Writes the two tiny ONNX graphs tests/test_onnx_features.py runs (needs the `onnx` package; the tests do not):

- mean_rgb_nhwc_uint8.onnx: image (N, H, W, 3) uint8 -> embedding (N, 4) float = [mean R, mean G, mean B, H*W]
  (H*W so that a test sees the resize rule);
- mean_rgb_nchw_float.onnx: image (N, 3, H, W) float -> embedding (N, 3) float = per-channel mean.

    python tests/data/make_onnx_fixtures.py
"""
from pathlib import Path

import onnx
from onnx import TensorProto, helper

HERE = Path(__file__).parent


def nhwc_uint8() -> onnx.ModelProto:
    x = helper.make_tensor_value_info("image", TensorProto.UINT8, ["batch", "height", "width", 3])
    y = helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", 4])
    axes = helper.make_tensor("axes", TensorProto.INT64, [2], [1, 2])
    nodes = [
        helper.make_node("Cast", ["image"], ["f"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMean", ["f", "axes"], ["mean"], keepdims=0),            # (N, 3)
        helper.make_node("Shape", ["image"], ["shape"]),                                   # [N, H, W, 3]
        helper.make_node("Slice", ["shape", "one", "three"], ["hw"]),                      # [H, W]
        helper.make_node("ReduceProd", ["hw"], ["area"], keepdims=1),                      # [H*W]
        helper.make_node("Cast", ["area"], ["areaf"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["areaf", "zero"], ["area2"]),                       # (1, 1)
        helper.make_node("Concat", ["mean", "area2"], ["embedding"], axis=1),
    ]
    inits = [axes, helper.make_tensor("one", TensorProto.INT64, [1], [1]),
             helper.make_tensor("three", TensorProto.INT64, [1], [3]),
             helper.make_tensor("zero", TensorProto.INT64, [1], [0])]
    g = helper.make_graph(nodes, "mean_rgb_nhwc_uint8", [x], [y], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)


def nchw_float() -> onnx.ModelProto:
    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, "height", "width"])
    y = helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", 3])
    axes = helper.make_tensor("axes", TensorProto.INT64, [2], [2, 3])
    g = helper.make_graph([helper.make_node("ReduceMean", ["image", "axes"], ["embedding"], keepdims=0)],
                          "mean_rgb_nchw_float", [x], [y], [axes])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)


if __name__ == "__main__":
    for name, model in (("mean_rgb_nhwc_uint8", nhwc_uint8()), ("mean_rgb_nchw_float", nchw_float())):
        onnx.checker.check_model(model)
        onnx.save(model, HERE / f"{name}.onnx")
