resource "gatehouse_ssh_host" "bastion" {
  name        = "bastion"
  address     = "bastion.internal:22"
  user        = "ops"
  host_key    = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOEUTqBqeZQjtMndz1LphtYO5IcPCLaCN3hxN0yK1Sen"
  private_key = "file:/etc/gatehouse/keys/bastion_ed25519"
}
