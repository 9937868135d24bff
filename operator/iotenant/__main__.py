from iotenant.cli import main

raise SystemExit(main())
