"""How one evaluation is spread over workers: the options, validated once.

Torch-free, so that ``advls evaluate --help`` can show them: :class:`Sharding`'s fields are
the command's ``--executor``, ``--jobs``, ``--threads``, ``--address``, ``--gpus-per-shard``,
``--shard-size`` and ``--shards`` options, :func:`advls.audit.audit`'s ``sharding`` and
:func:`advls.evaluate.evaluate_sharded`'s keyword arguments (``Sharding(...).options()``).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["Sharding"]


class Sharding(BaseModel):
    """Where the shards of one evaluation run, and how the points are cut into them.

    Results depend on the cut (``shard_size`` or ``shards``), the seed and the threads per
    shard (default 1), never on the executor or the jobs.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    executor: Literal["local", "ray"] = Field(
        "local",
        description="local: this process for one job, spawned worker processes for more; "
        "ray: one Ray task per shard (a local instance, or the cluster at --address).",
    )
    jobs: int | None = Field(
        None,
        ge=1,
        description="Shards at once (local default 1; ray default: what the cluster's CPUs allow).",
    )
    threads: int | None = Field(
        None,
        ge=1,
        description="Torch threads per shard (ray: the CPUs each task declares). Default 1: "
        "on the CPU the thread count changes how matrix products round, so it is part of "
        "what fixes the results.",
    )
    address: str | None = Field(
        None, description="ray: join a running cluster (auto, or ray://host:10001)."
    )
    gpus_per_shard: float = Field(
        0.0,
        ge=0,
        description="ray: GPUs each shard's task declares (fractions share a GPU); needs CUDA.",
    )
    shard_size: int | None = Field(
        None,
        ge=1,
        description="Points per shard (default: the batch size). Keep it to compare runs: "
        "the cut and the seed fix every result, whatever the workers.",
    )
    shards: int | None = Field(
        None, ge=1, description="Instead of --shard-size: this many shards of equal size."
    )

    @model_validator(mode="after")
    def _consistent(self) -> Sharding:
        if self.shard_size is not None and self.shards is not None:
            raise ValueError("give --shard-size or --shards, not both")
        if self.address is not None and self.executor != "ray":
            raise ValueError("--address applies to --executor ray only")
        if self.gpus_per_shard and self.executor != "ray":
            raise ValueError("--gpus-per-shard applies to --executor ray only")
        return self

    def options(self) -> dict[str, Any]:
        """The keyword arguments of :func:`advls.evaluate.evaluate_sharded`."""
        return self.model_dump()
