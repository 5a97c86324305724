terraform {
  required_providers {
    gatehouse = {
      source = "gatehouse-dev/gatehouse"
    }
  }
}

# The signing key is read when a bundle is published, through a reference;
# it never enters state. In CI: signing_key = "env:GATEHOUSE_SIGNING_KEY".
provider "gatehouse" {
  signing_key = "file:keys/gatehouse.key" # relative to terraform's working directory
}
