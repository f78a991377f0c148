"""The messages of the Open Inference Protocol's gRPC service (KServe's grpc_predict_v2.proto,
package `inference`, service GRPCInferenceService), built from this table when imported.

Why not generated *_pb2.py: generated code is tied to the protoc that wrote it (protobuf's runtime
refuses gencode of another major version), and the clients people use pin protobuf differently
(tritonclient wants < 7, Google's SDKs >= 6.33). Descriptors built at run time work with any protobuf
runtime from 4 on, need no code generator in the build, and read like the .proto. Field numbers and
types are the wire contract: tests/serve/test_grpc.py checks every one against Triton's own compiled
descriptors (tritonclient), a superset of KServe's. InferParameter carries Triton's double_param and
uint64_param too, so Triton's clients may send them. Imports protobuf only, never grpc.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

PACKAGE = "inference"
SERVICE = f"{PACKAGE}.GRPCInferenceService"

_T = descriptor_pb2.FieldDescriptorProto
_TYPES = {"bool": _T.TYPE_BOOL, "string": _T.TYPE_STRING, "bytes": _T.TYPE_BYTES, "int32": _T.TYPE_INT32,
          "int64": _T.TYPE_INT64, "uint32": _T.TYPE_UINT32, "uint64": _T.TYPE_UINT64, "float": _T.TYPE_FLOAT,
          "double": _T.TYPE_DOUBLE}
PARAMETERS = "map<string, InferParameter>"

# message -> [(field, number, type)]; "repeated T", "oneof:NAME T", a message name, or PARAMETERS.
# A nested message is written "Outer.Inner".
MESSAGES: dict[str, list[tuple[str, int, str]]] = {
    "ServerLiveRequest": [],
    "ServerLiveResponse": [("live", 1, "bool")],
    "ServerReadyRequest": [],
    "ServerReadyResponse": [("ready", 1, "bool")],
    "ModelReadyRequest": [("name", 1, "string"), ("version", 2, "string")],
    "ModelReadyResponse": [("ready", 1, "bool")],
    "ServerMetadataRequest": [],
    "ServerMetadataResponse": [("name", 1, "string"), ("version", 2, "string"), ("extensions", 3, "repeated string")],
    "ModelMetadataRequest": [("name", 1, "string"), ("version", 2, "string")],
    "ModelMetadataResponse": [("name", 1, "string"), ("versions", 2, "repeated string"), ("platform", 3, "string"),
                              ("inputs", 4, "repeated ModelMetadataResponse.TensorMetadata"),
                              ("outputs", 5, "repeated ModelMetadataResponse.TensorMetadata")],
    "ModelMetadataResponse.TensorMetadata": [("name", 1, "string"), ("datatype", 2, "string"),
                                             ("shape", 3, "repeated int64")],
    "ModelInferRequest": [("model_name", 1, "string"), ("model_version", 2, "string"), ("id", 3, "string"),
                          ("parameters", 4, PARAMETERS), ("inputs", 5, "repeated ModelInferRequest.InferInputTensor"),
                          ("outputs", 6, "repeated ModelInferRequest.InferRequestedOutputTensor"),
                          ("raw_input_contents", 7, "repeated bytes")],
    "ModelInferRequest.InferInputTensor": [("name", 1, "string"), ("datatype", 2, "string"),
                                           ("shape", 3, "repeated int64"), ("parameters", 4, PARAMETERS),
                                           ("contents", 5, "InferTensorContents")],
    "ModelInferRequest.InferRequestedOutputTensor": [("name", 1, "string"), ("parameters", 2, PARAMETERS)],
    "ModelInferResponse": [("model_name", 1, "string"), ("model_version", 2, "string"), ("id", 3, "string"),
                           ("parameters", 4, PARAMETERS),
                           ("outputs", 5, "repeated ModelInferResponse.InferOutputTensor"),
                           ("raw_output_contents", 6, "repeated bytes")],
    "ModelInferResponse.InferOutputTensor": [("name", 1, "string"), ("datatype", 2, "string"),
                                             ("shape", 3, "repeated int64"), ("parameters", 4, PARAMETERS),
                                             ("contents", 5, "InferTensorContents")],
    "InferParameter": [("bool_param", 1, "oneof:parameter_choice bool"),
                       ("int64_param", 2, "oneof:parameter_choice int64"),
                       ("string_param", 3, "oneof:parameter_choice string"),
                       ("double_param", 4, "oneof:parameter_choice double"),
                       ("uint64_param", 5, "oneof:parameter_choice uint64")],
    "InferTensorContents": [("bool_contents", 1, "repeated bool"), ("int_contents", 2, "repeated int32"),
                            ("int64_contents", 3, "repeated int64"), ("uint_contents", 4, "repeated uint32"),
                            ("uint64_contents", 5, "repeated uint64"), ("fp32_contents", 6, "repeated float"),
                            ("fp64_contents", 7, "repeated double"), ("bytes_contents", 8, "repeated bytes")],
}

# rpc -> (request, response): the calls served (KServe's repository load/unload are not: UNIMPLEMENTED)
METHODS = {name: (f"{name}Request", f"{name}Response") for name in
           ("ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata", "ModelInfer")}


def _file() -> descriptor_pb2.FileDescriptorProto:
    file = descriptor_pb2.FileDescriptorProto(name="mldeploy/grpc_predict_v2.proto", package=PACKAGE,
                                              syntax="proto3")
    protos: dict[str, descriptor_pb2.DescriptorProto] = {}
    for name in MESSAGES:  # outer messages come before their nested ones in the table
        outer, _, inner = name.rpartition(".")
        proto = (protos[outer].nested_type if outer else file.message_type).add(name=inner)
        protos[name] = proto
    for name, fields in MESSAGES.items():
        proto = protos[name]
        for field, number, kind in fields:
            f = proto.field.add(name=field, number=number, label=_T.LABEL_OPTIONAL, json_name=_camel(field))
            if kind == PARAMETERS:  # a map is a repeated entry message of its own, marked map_entry
                entry = proto.nested_type.add(name="ParametersEntry")
                entry.options.map_entry = True
                entry.field.add(name="key", number=1, label=_T.LABEL_OPTIONAL, type=_T.TYPE_STRING, json_name="key")
                entry.field.add(name="value", number=2, label=_T.LABEL_OPTIONAL, type=_T.TYPE_MESSAGE,
                                type_name=f".{PACKAGE}.InferParameter", json_name="value")
                kind = f"repeated {name}.ParametersEntry"
            if kind.startswith("oneof:"):
                oneof, kind = kind[6:].split()
                if oneof not in [o.name for o in proto.oneof_decl]:
                    proto.oneof_decl.add(name=oneof)
                f.oneof_index = [o.name for o in proto.oneof_decl].index(oneof)
            if kind.startswith("repeated "):
                f.label, kind = _T.LABEL_REPEATED, kind[9:]
            if kind in _TYPES:
                f.type = _TYPES[kind]
            else:
                f.type, f.type_name = _T.TYPE_MESSAGE, f".{PACKAGE}.{kind}"
    service = file.service.add(name=SERVICE.rsplit(".", 1)[1])
    for rpc, (request, response) in METHODS.items():
        service.method.add(name=rpc, input_type=f".{PACKAGE}.{request}", output_type=f".{PACKAGE}.{response}")
    return file


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(p.title() for p in rest)


_POOL = descriptor_pool.DescriptorPool()  # our own pool: a client's generated `inference` package may coexist
FILE = _POOL.Add(_file())


def message(name: str) -> type[Any]:
    """The message class of `name` (e.g. "ModelInferRequest")."""
    return message_factory.GetMessageClass(_POOL.FindMessageTypeByName(f"{PACKAGE}.{name}"))
