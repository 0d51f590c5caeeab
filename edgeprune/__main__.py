from edgeprune.cli.app import main

raise SystemExit(main())
