data "gatehouse_bundle" "published" {
  file         = "/srv/gatehouse/policy.bundle"
  min_revision = 1795000000 # must be newer, as a gateway requires
}

output "published" {
  value = "${data.gatehouse_bundle.published.revision} ${data.gatehouse_bundle.published.digest}: ${data.gatehouse_bundle.published.summary}"
}
