resource "gatehouse_kubernetes_cluster" "prod" {
  name    = "prod-cluster"
  server  = "https://k8s.internal:6443"
  token   = "k8s:gatehouse/prod-cluster-token#token"
  ca_file = "/etc/gatehouse/ca/prod-cluster.pem"
}
