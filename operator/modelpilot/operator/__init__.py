"""The modelpilot operator: kopf handlers → reconcile logic → pure builders → small adapters.

Layers (each module says where it sits):

* ``handlers``  — kopf decorators only; map errors to retry / stop.
* ``reconcile`` — what should exist given spec, observed state and the registry's answer; status and Events.
* ``builders``  — pure ``spec → manifest`` functions, no I/O.
* ``registry``, ``kube`` — adapters for MLflow and the Kubernetes API, each with one place for its errors.
* ``settings``  — one settings object, validated at start-up.
"""
