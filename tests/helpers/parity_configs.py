"""The mergekit YAMLs of the real-model parity check: every operator mergekit 0.1.5 and evomerge
both have, with non-trivial parameters (per-model weights, a depth gradient, a filter).
Models are named BASE, V0, V1, V2. DARE and DELLA at density 1: their deterministic part."""

from __future__ import annotations

GTA = """
    merge_method: {op}
    base_model: BASE
    models:
      - {{model: V0, parameters: {{weight: 0.6, density: {d}{x}}}}}
      - {{model: V1, parameters: {{weight: [0.2, 0.8], density: {d}{x}}}}}
      - {{model: V2, parameters: {{weight: 0.4, density: {d}{x}}}}}
    """


def _gta(op: str, d: float, x: str = "") -> str:
    return GTA.format(op=op, d=d, x=x)


CONFIGS = {
    "linear": """
        merge_method: linear
        models:
          - {model: V0, parameters: {weight: 0.5}}
          - {model: V1, parameters: {weight: [0.1, 0.9]}}
          - {model: V2, parameters: {weight: 0.2}}
        """,
    "task_arithmetic": _gta("task_arithmetic", 1.0) + "parameters: {lambda: 0.9}\n",
    "ties": _gta("ties", 0.4),
    "dare_ties_d1": _gta("dare_ties", 1.0),
    "dare_linear_d1": _gta("dare_linear", 1.0),
    "breadcrumbs": _gta("breadcrumbs", 0.8, ", gamma: 0.01"),
    "breadcrumbs_ties": _gta("breadcrumbs_ties", 0.6, ", gamma: 0.02"),
    "della_d1": _gta("della", 1.0, ", epsilon: 0.1"),
    "della_linear_d1": _gta("della_linear", 1.0, ", epsilon: 0.1"),
    "slerp": """
        merge_method: slerp
        base_model: BASE
        models: [{model: BASE}, {model: V0}]
        parameters:
          t: [{filter: self_attn, value: [0.1, 0.9]}, {value: 0.4}]
        """,
    "nuslerp": """
        merge_method: nuslerp
        models:
          - {model: V0, parameters: {weight: 0.3}}
          - {model: V1, parameters: {weight: 0.7}}
        """,
    "nuslerp_base": """
        merge_method: nuslerp
        base_model: BASE
        models:
          - {model: V0, parameters: {weight: 0.6}}
          - {model: V1, parameters: {weight: 0.4}}
        """,
    "multislerp": """
        merge_method: multislerp
        models:
          - {model: V0, parameters: {weight: 0.5}}
          - {model: V1, parameters: {weight: 0.3}}
          - {model: V2, parameters: {weight: 0.2}}
        """,
    # two models: where neither moved a tensor (norms, untouched projections) both tools fall
    # back to linear; with three, both refuse such a tensor (mergekit: ValueError)
    "multislerp_base": """
        merge_method: multislerp
        base_model: BASE
        models:
          - {model: V0, parameters: {weight: 0.6}}
          - {model: V1, parameters: {weight: 0.4}}
        """,
    "model_stock": """
        merge_method: model_stock
        base_model: BASE
        models: [{model: V0}, {model: V1}, {model: V2}]
        """,
    "passthrough_slices": """
        merge_method: passthrough
        slices:
          - sources: [{model: V0, layer_range: [0, 2]}]
          - sources:
              - model: V1
                layer_range: [1, 2]
                parameters: {scale: [{filter: o_proj, value: 0.5}, {value: 1.0}]}
          - sources: [{model: V2, layer_range: [1, 2]}]
        """,
}
