"""The models a request may name, and what `/v1/models` lists."""

from __future__ import annotations

import logging

from apportion.config import Settings
from apportion.engines import catalogue
from apportion.errors import ApportionError
from apportion.runtime import Runtime
from apportion.server.schemas import AUTO_MODEL, ModelCard, ModelList

log = logging.getLogger(__name__)


class ServedModels:
    """The models one Runtime serves. Fixed when the server starts, plus any engine registered
    on the Runtime since."""

    def __init__(self, settings: Settings, engine: Runtime) -> None:
        self.engine = engine
        self._at_start = self._servable(settings)
        self._experts = self._servable_experts(settings, self._at_start)

    def _servable(self, s: Settings) -> list[str]:
        """Configured remote engines, catalogue models already pulled (a request never starts a
        download), the configured default and large models, and engines registered on the
        Runtime. Arbitrary .gguf paths are not servable: a request must not make the server
        open files of its choosing."""
        pulled = [
            mid
            for mid, model in catalogue.CATALOGUE.items()
            if catalogue.model_path(s.models_dir, model).exists()
        ]
        ids = [s.default_model, *pulled, *(e.id for e in s.engines), *self.engine.loaded_models()]
        if s.large_model in catalogue.CATALOGUE and s.large_model in pulled:
            ids.append(s.large_model)
        return list(dict.fromkeys(ids))

    @staticmethod
    def _servable_experts(s: Settings, models: list[str]) -> dict[str, str]:
        """Expert → base model: the installed experts whose base model is servable, and the
        experts a remote [[engines]] entry maps to its server's model names."""
        from apportion.experts.book import ExpertBook

        book = ExpertBook(s.home)
        experts: dict[str, str] = {}
        for name in book.names():
            try:
                expert = book.find(name)
            except ApportionError as e:  # one broken manifest does not keep the server down
                log.warning("expert %s is not served: %s", name, e.message)
                continue
            if expert.base_model in models:
                experts[name] = expert.base_model
        for entry in s.engines:
            for name in getattr(entry, "experts", {}) or {}:
                experts[name] = entry.id
        return experts

    def ids(self) -> list[str]:
        return list(dict.fromkeys([*self._at_start, *self._experts,
                                   *self.engine.loaded_models()]))  # fmt: skip

    def listing(self) -> ModelList:
        """`apportion-auto`, every strategy, and every model a request may name."""
        cards = [ModelCard(id=AUTO_MODEL, kind="router")]
        cards += [ModelCard(id=n, kind="strategy") for n in self.engine.registry.names()]
        cards += [ModelCard(id=n, kind="model") for n in self.ids() if n not in self._experts]
        cards += [ModelCard(id=n, kind="expert", parent=b) for n, b in self._experts.items()]
        return ModelList(data=cards)
