"""CDKTF constructs, one per concern, composed by `infra/stack.py` into one stack per environment.

Each construct is small and documented (its docstring: what it makes, its input, its outputs). It takes one
typed input object from `inputs` plus ids, names and emails, never another construct; it labels what can be
labelled, and exposes what other constructs need as plain values (names, ids, emails). Files without cdktf
imports (`inputs`, `alert_rules`, `dashboards`, `gpu_vm_boot`) are data helpers that tests use directly.

    inputs                the typed inputs of the constructs (infra/config.py's env sections extend them)
    grants                resource-level IAM grants (secret accessor, Cloud Run role, act-as, bucket role)
    private_bucket        the private, versioned Cloud Storage bucket every bucket of the stack is
    service_identity      a service account and its project-level roles

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
    kill_switch           the budget's Pub/Sub topic and the function that stops the spending
    dashboards            reads the Grafana dashboards in dashboards/
    github_oidc           workload identity for GitHub Actions and the deployer service account
"""
