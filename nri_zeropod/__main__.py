from nri_zeropod.cli import main

raise SystemExit(main())
