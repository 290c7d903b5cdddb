"""CDKTF constructs, one per concern, composed by `infra/stack.py` into one stack per environment.

Each construct is small, typed and documented; it takes plain values (never the env config object), labels
what can be labelled, and exposes the resources other constructs need as attributes. Files without cdktf
imports (`alert_rules`, `gpu_vm_boot`) are data helpers that tests use directly.

    project_services      the Google APIs the stack uses, and the wait after them (time_sleep)
    secrets               the Secret Manager secrets the env file declares (no values)
    artifact_registry     Docker repository with a cleanup policy
    build_trigger         the build service account and source bucket; optional trigger on pushes
    cloud_run_service     the CPU service + Managed Service for Prometheus sidecar
    network               VPC for the GPU VMs: private subnet, Cloud NAT, health-check firewall
    gpu_inference_group   L4 instance template, regional MIG with autohealing and autoscaler
    gpu_vm_boot           the GPU VM's startup script and Ops Agent (Managed Prometheus) config
    http_load_balancer    external HTTPS load balancer with Cloud Armor in front of the GPU group
    monitoring            email channels, PromQL alert policies from alerts/, uptime check
    alert_rules           reads the Prometheus rule files in alerts/
    grafana               Grafana on Cloud Run with provisioned dashboards and a Managed Prometheus datasource
    budget                billing budget with email alerts
    github_oidc           workload identity for GitHub Actions and the deployer service account
"""
