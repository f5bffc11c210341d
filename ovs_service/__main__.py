from ovs_service.cli import main

main()
