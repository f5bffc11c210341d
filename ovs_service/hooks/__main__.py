from ovs_service.hooks import main

main()
